"""Decoder (causal-LM) model facts in one table, their KV-cache layout, and saved folders.

``DECODER_FAMILIES`` is the one place that says which ``model.family`` values are
decoder LLMs and which transformers classes build them from a config (random init,
offline). A local folder (``model.path`` / ``model.checkpoint``) of any causal LM loads
through ``AutoModelForCausalLM`` whatever its architecture; the family then only says
"decoder". :func:`harness.models.load_model` reads this table.

This module imports nothing heavy at import time: ``harness.models`` imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

import numpy as np


class DecoderModel(Protocol):
    """What the artifact stages read of a decoder (a :class:`harness.generation.session.DecoderSource`
    is one): declared here so that they need not import the session contract."""

    name: str
    module: Any
    config: dict[str, Any]
    tokenizer: Any
    params: int
    weights_digest: str
    cache_root: Optional[str]


@dataclass(frozen=True)
class DecoderFamily:
    """transformers config and causal-LM class names of one decoder family."""

    config_class: str
    model_class: str

    def build(self, config: Mapping[str, Any]) -> Any:
        """A randomly initialised model from ``config`` (seed the RNG before calling)."""
        import transformers

        cfg = getattr(transformers, self.config_class)(**config)
        return getattr(transformers, self.model_class)(cfg)


#: model.family -> how to build it. llama: Llama 2/3 blocks (RMSNorm, RoPE, SwiGLU, GQA);
#: gpt2: GPT-2 blocks (LayerNorm, learned positions, GELU, multi-head attention).
DECODER_FAMILIES: dict[str, DecoderFamily] = {
    "llama": DecoderFamily("LlamaConfig", "LlamaForCausalLM"),
    "gpt2": DecoderFamily("GPT2Config", "GPT2LMHeadModel"),
}


def is_decoder(family: str) -> bool:
    return family in DECODER_FAMILIES


@dataclass(frozen=True)
class KVLayout:
    """Shape of the key/value cache: per layer a key and a value tensor of
    ``(batch, kv_heads, tokens, head_dim)``."""

    layers: int
    kv_heads: int
    head_dim: int

    def bytes(self, batch: int, tokens: int, bytes_per_element: int) -> int:
        """``2 (key, value) x layers x batch x kv_heads x tokens x head_dim x bytes``."""
        return 2 * self.layers * batch * self.kv_heads * tokens * self.head_dim * bytes_per_element


def kv_layout(config: Mapping[str, Any]) -> KVLayout:
    """The cache layout from a transformers config dict (Llama-style or GPT-2-style keys)."""
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return KVLayout(int(layers), int(kv_heads), int(head_dim))


def max_positions(config: Mapping[str, Any]) -> int | None:
    """How many positions the model can attend to (None when the config does not say)."""
    value = config.get("max_position_embeddings", config.get("n_positions"))
    return int(value) if value else None


def positions(attention_mask: np.ndarray, seq: int) -> np.ndarray:
    """``position_ids`` of the last ``seq`` tokens: left padding does not advance positions."""
    pos = np.cumsum(attention_mask, axis=1) - 1
    return np.maximum(pos, 0)[:, -seq:].astype(np.int64)


def vocab_size(config: Mapping[str, Any]) -> int:
    return int(config["vocab_size"])


MARKER = "harness_decoder.json"


def saved_folder(source: DecoderModel) -> Path:
    """``save_pretrained`` of the source's model and tokenizer in the cache, keyed by its weights.

    Written into a temp sibling and renamed into place, so a reader never sees half a folder.
    """
    from harness import cache

    key = cache.content_key("decoder-folder/1", source.weights_digest, source.config)
    final = cache.cache_dir(source.cache_root) / "decoders" / key
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        source.module.save_pretrained(staging, safe_serialization=True)
        if source.tokenizer is not None:
            source.tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"name": source.name, "weights": source.weights_digest}))
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
