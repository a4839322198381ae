"""The token loop the in-process backends share: left padding, next-token choice, timestamps.

A backend that drives its engine step by step (PyTorch with a transformers KV cache,
ONNX Runtime with IOBinding, an OpenVINO stateful request) implements a
:class:`Stepper` (prefill a padded batch, then feed one token per request) and calls
:func:`run_loop`. The loop takes each token's timestamp once that token is on the host
(the stepper returns host logits, so the device is done), and picks tokens the same way
on every backend: arg-max for greedy, seeded numpy sampling otherwise. One loop for
all of them keeps backend comparisons about the engines, not about loop code.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from harness.generation.decoders import positions
from harness.generation.session import Decoding, GenerationOutput, now

__all__ = ["positions"]  # re-exported: callers that step a KV cache import it from here


class Stepper(Protocol):
    """One engine's forward passes over a KV cache it keeps between calls of one request batch."""

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Start a new batch: ``ids``/``mask`` int64 ``(batch, len)``, left-padded; drop any
        previous cache. Return the last position's logits on the host, ``(batch, vocab)``."""

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Feed one token per request (``(batch,)``) with the grown ``mask``; return host logits."""


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, mask)`` int64 ``(batch, longest)`` with shorter prompts padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    ids = np.full((len(prompts), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = prompt
        mask[row, longest - len(prompt) :] = 1
    return ids, mask


class TokenPicker:
    """Next token from host logits: arg-max (greedy) or seeded sampling (temperature, top-k, top-p)."""

    def __init__(self, decoding: Decoding) -> None:
        self.decoding = decoding
        self.rng = np.random.default_rng(decoding.seed)

    def pick(self, logits: np.ndarray) -> np.ndarray:
        if self.decoding.greedy:
            return np.asarray(logits).argmax(axis=-1).astype(np.int64)
        return np.array([self._sample(row) for row in np.asarray(logits, dtype=np.float64)], dtype=np.int64)

    def _sample(self, logits: np.ndarray) -> int:
        d = self.decoding
        scaled = logits / d.temperature
        order = np.argsort(-scaled, kind="stable")
        if d.top_k:
            order = order[: d.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if d.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), d.top_p) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        return int(order[self.rng.choice(len(order), p=probs)])


def run_loop(stepper: Stepper, prompts: Sequence[Sequence[int]], max_new_tokens: int, decoding: Decoding, pad_id: int = 0) -> list[GenerationOutput]:
    """Generate ``max_new_tokens`` per prompt with ``stepper``; every token timed on the host."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    picker = TokenPicker(decoding)
    start = now()
    ids, mask = left_pad(prompts, pad_id)
    logits = stepper.prefill(ids, mask)
    tokens = np.empty((len(prompts), max_new_tokens), dtype=np.int64)
    times: list[float] = []
    for step in range(max_new_tokens):
        tokens[:, step] = picker.pick(logits)
        times.append(now())
        if step + 1 == max_new_tokens:
            break
        mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
        logits = stepper.decode(tokens[:, step], mask)
    return [GenerationOutput(tokens[row].tolist(), list(times), start, len(prompt)) for row, prompt in enumerate(prompts)]


def next_token_logprobs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(batch, T - 1)`` log-probabilities of ``ids[:, 1:]`` under ``logits[:, :-1]`` (float64)."""
    logits = np.asarray(logits, dtype=np.float64)[:, :-1]
    top = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    chosen = np.take_along_axis(logits, np.asarray(ids)[:, 1:, None], axis=-1)[..., 0]
    return chosen - log_norm
