"""Trained checkpoints in the artifact cache, and ``model.checkpoint=PATH|auto``.

A training run saves its model (safetensors + config) and the tokenizer it trained
with into ``<cache>/checkpoints/<key>/``; the key covers the model (config, init seed,
source folder), the dataset's fingerprint and the training recipe (every option that
changes the weights), so a changed input never reuses a stale checkpoint.

``model.checkpoint=auto`` asks for the checkpoint that the family's train recipe
(``bert_train`` for BERT, ``resnet_train`` for ResNet, ``llm_train`` for the decoder LLMs)
produces for this model and
dataset; :mod:`harness.autotrain` (a stage of the runner) finds it here or trains it.
This module is only the store: keys, find, save, a per-key lock. A folder is complete only once its marker file exists; it is written
into a temp folder and renamed into place, so an interrupted save is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional

from harness import cache
from harness.errors import ConfigError, Unsupported
from harness.families import FAMILIES
from harness.models import LoadedModel, ModelOptions, transformers_model
from harness.training.options import MEASUREMENT_ONLY, TrainingOptions

KIND = "checkpoints"
MARKER = "harness_checkpoint.json"
#: The train recipe (a ``conf/scenario/`` name) whose output ``auto`` means, per model family
#: (from the family table).
RECIPES = {name: f.train_recipe for name, f in FAMILIES.items() if f.train_recipe}


def model_identity(options: ModelOptions) -> dict[str, Any]:
    """What determines a model's initial weights; the display name does not."""
    identity: dict[str, Any] = {"family": options.family, "num_labels": options.num_labels, "seed": options.seed, "config": options.config, "path": None}
    if options.path:
        folder = Path(options.path).expanduser().resolve()
        files = sorted(folder.glob("*.safetensors"))
        identity["path"] = [str(folder), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]
    return identity


def checkpoint_key(model: ModelOptions, data_fingerprint: str, recipe: TrainingOptions, extra: Optional[dict[str, Any]] = None) -> str:
    """The cache key of the checkpoint ``recipe`` trains from ``model`` on that data."""
    weights_relevant = {k: v for k, v in asdict(recipe).items() if k not in MEASUREMENT_ONLY}
    weights_relevant["distributed"] = recipe.distributed.weights_identity()
    return cache.content_key("checkpoint/1", model_identity(model), data_fingerprint, weights_relevant, extra or {})


def find(key: str, cache_root: str | os.PathLike[str] | None) -> Optional[Path]:
    """The complete, intact checkpoint folder for ``key``, or None.

    Intact means its files match the checksums :func:`save` stored (:mod:`harness.cache`);
    a damaged checkpoint is discarded with a warning, so ``auto`` trains a new one.
    """
    folder = cache.cache_dir(cache_root) / KIND / key
    if cache.folder_verified(folder, (MARKER,)):
        return folder
    if folder.is_dir() and any(folder.iterdir()):
        cache.discard(folder, "does not match its checksums (truncated or corrupted)")
    return None


def save(model: LoadedModel, tokenizer: Any, key: str, cache_root: str | os.PathLike[str] | None, meta: dict[str, Any]) -> Path:
    """Write model (safetensors), config, tokenizer and a marker; return the folder.

    Built in a staging folder, sealed with checksums and renamed into place
    (:mod:`harness.cache`); a previous checkpoint under the same key is replaced only
    once the new one is complete.
    """
    # A decoder is saved whole: its ``.model`` is the base *without* the LM head.
    hf_model = transformers_model(model.module)
    if not hasattr(hf_model, "save_pretrained"):
        raise Unsupported(
            f"model {model.name} cannot be saved as a checkpoint (no save_pretrained)", "train a transformers model (family bert, resnet, llama or gpt2)"
        )
    final = cache.cache_dir(cache_root) / KIND / key
    with cache.staging(KIND, key, cache_root) as staging:
        with _quiet_transformers():
            # Host copies of the weights: safetensors cannot read device (CUDA, XLA) tensors.
            host_state = {k: v.detach().cpu() for k, v in hf_model.state_dict().items()}
            hf_model.save_pretrained(staging, safe_serialization=True, state_dict=host_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"key": key, "saved": time.time(), **meta}, indent=2, default=str))
        cache.publish(staging, final, (MARKER,), replace=True)
    return final


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Writing model shards" bar in the middle of the harness's own progress lines."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def checkpoint_folder(requested: str | os.PathLike[str]) -> Path:
    """The folder ``model.checkpoint=PATH`` names, checked to be a saved model."""
    folder = Path(requested).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.checkpoint '{folder}' is not a checkpoint folder (no config.json)",
            "point it at a folder written by save_pretrained, or use model.checkpoint=auto",
        )
    return folder


@contextlib.contextmanager
def training_lock(key: str, cache_root: str | os.PathLike[str] | None) -> Iterator[None]:
    """An exclusive ``flock`` per checkpoint key, so concurrent runs sharing a cache train it once.

    Where the cache's filesystem refuses ``flock`` the runs go ahead unlocked: the
    atomic rename in :func:`save` still keeps every reader on a complete checkpoint.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path = cache.cache_dir(cache_root) / KIND / f".{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tokenizer_of(options: ModelOptions, cache_root: str | os.PathLike[str] | None = None) -> Any:
    """The tokenizer the recipe's data is made with, as training will pick it: a local
    model folder's own (families with a tokenizer), else the family's embedded one (None
    for BERT's word-level one, the corpus BPE for decoders, cached under ``cache_root``)."""
    from harness.generation.tokenizer import text_tokenizer

    family = FAMILIES[options.family]
    if not family.tokenizer:
        return None
    own = None
    folder = Path(options.path).expanduser() if options.path else None
    if folder is not None and (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return text_tokenizer(options.family, own, None if cache_root is None else str(cache_root))
