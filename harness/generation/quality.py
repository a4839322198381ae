"""Quality beside speed for generation: perplexity vs eager fp32, greedy-token agreement.

``metrics.accuracy`` of a generation run:

* ``metric = "perplexity"``, ``value`` = ``exp(-mean log p(next token))`` of the
  backend's own :meth:`~harness.generation.session.GenerationSession.score` on held-out
  eval windows;
* ``reference`` = the same on eager fp32 PyTorch (cached per weights and windows, so a
  sweep pays for it once); ``relative = reference / value`` (1.0 = no loss; lower
  perplexity is better, so a lossy backend scores below 1);
* ``agreement`` = share of generated positions where the backend's greedy token equals
  eager fp32 greedy's (transformers ``generate``, an implementation independent of the
  harness's loop), over the measured prompts; ``prefix_agreement`` = mean share of each
  request's tokens before its first divergence (after one, the prefixes differ and
  later tokens are no longer comparable position by position).

Formulas are unit-tested on hand-made numbers (``tests/test_generation_quality.py``).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np

from harness import cache
from harness.errors import Unsupported


def perplexity(logprobs: np.ndarray) -> float:
    """``exp(-mean(logprobs))`` over every scored token."""
    values = np.asarray(logprobs, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no token to score")
    return float(np.exp(-values.mean()))


def agreement(tokens: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> float:
    """Share of positions where ``tokens`` equals ``reference`` (same shapes required)."""
    got, want = np.asarray(tokens), np.asarray(reference)
    if got.shape != want.shape or got.size == 0:
        raise ValueError(f"need equal, non-empty shapes; got {got.shape} and {want.shape}")
    return float(np.mean(got == want))


def prefix_agreement(tokens: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> float:
    """Mean over requests of (tokens before the first difference) / (tokens generated)."""
    got, want = np.asarray(tokens), np.asarray(reference)
    if got.shape != want.shape or got.size == 0:
        raise ValueError(f"need equal, non-empty shapes; got {got.shape} and {want.shape}")
    differs = got != want
    first = np.where(differs.any(axis=1), differs.argmax(axis=1), got.shape[1])
    return float(np.mean(first / got.shape[1]))


def score_in_batches(score: Any, windows: np.ndarray, batch_size: int) -> np.ndarray:
    """``score`` (ids -> next-token log-probs) over ``windows`` in batches of ``batch_size``."""
    parts = [np.asarray(score(windows[i : i + batch_size]), dtype=np.float64) for i in range(0, len(windows), batch_size)]
    return np.concatenate(parts)


def eager_logprobs(module: Any, ids: np.ndarray) -> np.ndarray:
    """Next-token log-probabilities of the eager fp32 transformers model (no cache)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(ids))
    with torch.inference_mode():
        logits = module(input_ids=tensor, use_cache=False).logits.double()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tensor[:, 1:, None])[..., 0]
    return logprobs.numpy()


def eager_greedy(module: Any, prompts: np.ndarray, new_tokens: int, pad_id: int = 0) -> np.ndarray:
    """Greedy tokens of transformers ``generate`` in eager fp32: exactly ``new_tokens`` per
    prompt (no end-of-sequence stop: ``eos_token_id`` unset in the generation config)."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=0, eos_token_id=None, pad_token_id=pad_id)
    ids = torch.from_numpy(np.ascontiguousarray(prompts))
    with torch.inference_mode():
        out = module.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[:, ids.shape[1] :].numpy()


def _cached_array(kind: str, key_parts: tuple[Any, ...], cache_root: Optional[str], compute: Any) -> tuple[np.ndarray, bool]:
    """``compute()`` stored as ``<cache>/<kind>/<key>/value.npy``; returns (array, was cached)."""
    folder = cache.entry(kind, cache.content_key(*key_parts), cache_root)
    path = folder / "value.npy"
    if path.is_file():
        return np.load(path), True
    value = np.asarray(compute())
    tmp = folder / "value.tmp.npy"
    np.save(tmp, value)
    tmp.replace(path)
    (folder / "meta.json").write_text(json.dumps({"kind": kind, "shape": list(value.shape)}))
    return value, False


#: Windows per eager forward pass for the reference (the backend scores at the run's batch size).
REFERENCE_BATCH = 8


def reference_logprobs(source: Any, windows: np.ndarray, cache_root: Optional[str]) -> tuple[np.ndarray, bool]:
    """Eager fp32 next-token log-probs of ``windows``, cached per weights and windows."""
    parts = ("llm-reference-logprobs/1", source.weights_digest, windows.tobytes(), list(windows.shape))
    return _cached_array("llm_reference", parts, cache_root, lambda: score_in_batches(lambda ids: eager_logprobs(source.module, ids), windows, REFERENCE_BATCH))


def reference_greedy(source: Any, prompts: np.ndarray, new_tokens: int, cache_root: Optional[str]) -> tuple[np.ndarray, bool]:
    """Eager fp32 greedy tokens for ``prompts``, cached per weights, prompts and length."""
    parts = ("llm-reference-greedy/1", source.weights_digest, prompts.tobytes(), list(prompts.shape), new_tokens)
    return _cached_array("llm_reference", parts, cache_root, lambda: eager_greedy(source.module, prompts, new_tokens))


def accuracy_metrics(
    session: Any, source: Any, windows: np.ndarray, prompts: np.ndarray, greedy_tokens: Optional[np.ndarray], batch_size: int, cache_root: Optional[str]
) -> dict[str, Any]:
    """``metrics.accuracy``: perplexity beside the eager fp32 reference, and greedy agreement.

    ``greedy_tokens`` are the session's greedy tokens for ``prompts`` (None when the run
    sampled: sampled tokens are not comparable across engines).
    """
    reference, ref_cached = reference_logprobs(source, windows, cache_root)
    out: dict[str, Any] = {
        "metric": "perplexity",
        "value": None,
        "reference": perplexity(reference),
        "relative": None,
        "agreement": None,
        "windows": int(len(windows)),
        "window_tokens": int(windows.shape[1]),
        "reference_source": "eager fp32 pytorch" + (", cached" if ref_cached else ""),
    }
    try:
        value = perplexity(score_in_batches(session.score, windows, batch_size))
        out.update(value=value, relative=out["reference"] / value)
    except Unsupported as exc:
        out["value_reason"] = exc.one_line()
    if greedy_tokens is not None:
        want, _ = reference_greedy(source, prompts, greedy_tokens.shape[1], cache_root)
        out.update(agreement=agreement(greedy_tokens, want), prefix_agreement=prefix_agreement(greedy_tokens, want), agreement_prompts=int(len(prompts)))
    return out
