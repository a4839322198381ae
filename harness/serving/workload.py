"""Seeded generation workloads: prompts and output lengths for a serving run.

Prompt and output lengths are either fixed (``stdev = 0``) or drawn from a normal
distribution, rounded and clipped to ``[min, max]`` (guidellm's synthetic-data knobs).
Prompt text comes from the dataset's eval split, in one of two ways:

- ``corpus``: the eval texts joined into one token stream; each prompt is a slice of
  exactly the drawn length, starting at a seeded random offset (so prompts differ and
  a server's prefix cache cannot serve one from another);
- ``eval_split``: each eval text is one prompt, in a seeded order: the natural length
  distribution of the data (capped at ``prompt_tokens_max`` when set).

Tokens are counted with the serving model's tokenizer when the session knows it (the
prompt then carries its exact ids); without one, with whitespace words, and the run
records the server's own prompt token counts beside. The same seed gives the same
requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from harness.validation import choice, require
from harness.serving.session import GenerationRequest, Tokenizer

SOURCES = ("corpus", "eval_split")


@dataclass
class WorkloadOptions:
    """``scenario.workload.*``: lengths in tokens; ``*_max = 0`` means no upper clip."""

    prompt_tokens: int = 64
    prompt_tokens_stdev: float = 0.0
    prompt_tokens_min: int = 1
    prompt_tokens_max: int = 0
    output_tokens: int = 32
    output_tokens_stdev: float = 0.0
    output_tokens_min: int = 1
    output_tokens_max: int = 0
    source: str = "corpus"
    ignore_eos: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        choice(self.source, SOURCES, "workload.source")
        for name in ("prompt", "output"):
            mean, stdev = getattr(self, f"{name}_tokens"), getattr(self, f"{name}_tokens_stdev")
            lo, hi = getattr(self, f"{name}_tokens_min"), getattr(self, f"{name}_tokens_max")
            require(mean >= 1, f"workload.{name}_tokens", f"must be >= 1, got {mean}")
            require(stdev >= 0, f"workload.{name}_tokens_stdev", f"must be >= 0, got {stdev}")
            require(lo >= 1, f"workload.{name}_tokens_min", f"must be >= 1, got {lo}")
            require(hi == 0 or hi >= lo, f"workload.{name}_tokens_max", f"must be 0 (no cap) or >= {name}_tokens_min, got {hi}")


def sample_lengths(mean: int, stdev: float, low: int, high: int, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` lengths: all ``mean`` when ``stdev`` is 0, else normal draws rounded and
    clipped to ``[low, high]`` (``high = 0``: no upper clip)."""
    if stdev == 0:
        values = np.full(count, mean, dtype=np.int64)
    else:
        values = np.rint(rng.normal(mean, stdev, size=count)).astype(np.int64)
    values = np.maximum(values, low)
    if high:
        values = np.minimum(values, high)
    return [int(v) for v in values]


def load_tokenizer(path: Optional[str]) -> Optional[Tokenizer]:
    """A local tokenizer (a folder with tokenizer files, or one tokenizer.json), or None."""
    if not path:
        return None
    from pathlib import Path

    from harness.errors import ConfigError

    where = Path(path).expanduser()
    if where.is_file():
        from tokenizers import Tokenizer as FastTokenizer

        return PlainTokenizer(FastTokenizer.from_file(str(where)))
    if not (where / "tokenizer.json").exists() and not (where / "tokenizer_config.json").exists():
        raise ConfigError(f"no tokenizer at {where}", "point it at a local tokenizer folder or a tokenizer.json file")
    from transformers import AutoTokenizer

    return PlainTokenizer(AutoTokenizer.from_pretrained(str(where), local_files_only=True))


class PlainTokenizer:
    """A transformers or ``tokenizers`` tokenizer as plain ids in, text out: no special
    tokens, so a slice of a joined corpus stays a slice (the server adds its own BOS)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def encode(self, text: str) -> list[int]:
        encoded = self.inner.encode(text, add_special_tokens=False)
        return list(getattr(encoded, "ids", encoded))

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(list(ids))


class PromptPool:
    """The eval texts prompts are cut from, tokenized once (a run builds many workloads)."""

    def __init__(self, texts: Sequence[str], tokenizer: Optional[Tokenizer]) -> None:
        self.texts = [t.strip() for t in texts if t.strip()]
        if not self.texts:
            raise ValueError("the workload needs at least one non-empty text to cut prompts from")
        self.tokenizer = tokenizer
        self._stream: Optional[list[Any]] = None

    @property
    def stream(self) -> list[Any]:
        """The joined texts as token ids (whitespace words without a tokenizer)."""
        if self._stream is None:
            joined = " ".join(self.texts)
            self._stream = joined.split() if self.tokenizer is None else list(self.tokenizer.encode(joined))
        return self._stream

    def _piece(self, units: list[Any]) -> tuple[str, list[int], int]:
        if self.tokenizer is None:
            return " ".join(units), [], len(units)
        return self.tokenizer.decode(units), units, len(units)

    def slices(self, lengths: list[int], rng: np.random.Generator) -> list[tuple[str, list[int], int]]:
        """One slice of the stream per length, from seeded offsets (wrapping around a short corpus)."""
        stream = self.stream
        out = []
        for length in lengths:
            start = int(rng.integers(0, len(stream)))
            out.append(self._piece([stream[(start + k) % len(stream)] for k in range(length)]))
        return out

    def whole(self, count: int, cap: int, rng: np.random.Generator) -> list[tuple[str, list[int], int]]:
        """Whole texts in a seeded order, each capped at ``cap`` tokens (0 = no cap)."""
        order = rng.permutation(len(self.texts))
        out = []
        for k in range(count):
            text = self.texts[int(order[k % len(order)])]
            units = text.split() if self.tokenizer is None else list(self.tokenizer.encode(text))
            if cap and len(units) > cap:
                out.append(self._piece(units[:cap]))
            else:
                out.append((text, [] if self.tokenizer is None else units, len(units)))
        return out


def build_requests(pool: PromptPool, options: WorkloadOptions, count: int) -> tuple[list[GenerationRequest], dict[str, Any]]:
    """``count`` requests from ``pool`` and a description of the workload for the record."""
    rng = np.random.default_rng(options.seed)
    outputs = sample_lengths(options.output_tokens, options.output_tokens_stdev, options.output_tokens_min, options.output_tokens_max, count, rng)
    if options.source == "corpus":
        lengths = sample_lengths(options.prompt_tokens, options.prompt_tokens_stdev, options.prompt_tokens_min, options.prompt_tokens_max, count, rng)
        prompts = pool.slices(lengths, rng)
    else:
        prompts = pool.whole(count, options.prompt_tokens_max, rng)
    requests = [
        GenerationRequest(index=i, prompt=text, max_tokens=out, prompt_ids=tuple(ids), ignore_eos=options.ignore_eos)
        for i, ((text, ids, _), out) in enumerate(zip(prompts, outputs))
    ]
    prompt_lengths = [n for _, _, n in prompts]
    description = {
        "source": options.source,
        "tokenizer": "the serving model's" if pool.tokenizer is not None else "none (whitespace words)",
        "requests": count,
        "prompt_tokens": {"mean": float(np.mean(prompt_lengths)), "min": min(prompt_lengths), "max": max(prompt_lengths)},
        "output_tokens": {"mean": float(np.mean(outputs)), "min": min(outputs), "max": max(outputs)},
        "seed": options.seed,
    }
    return requests, description
