"""Serving on the ``onnxruntime`` backend: a continuous-batching scheduler over the IOBinding decoder.

ONNX Runtime ships no LLM scheduler (onnxruntime-genai brings its own model builder
instead of the harness's validated export), so the harness schedules the exported
decoder-with-past itself, the way early continuous-batching servers (TGI's first
router) did with padded caches:

- the running batch is one set of past key/value tensors ``(batch, kv_heads, past,
  head_dim)`` per layer, each sequence a row, left-padded to the longest with its
  attention-mask row zero there (position ids come from the mask, so padding never
  shifts a sequence);
- each engine step is either a *prefill* of waiting requests (as many as fit in the
  free rows and ``max_batched_tokens`` padded prompt tokens; each gets its first
  token) or a *decode* of every running sequence (one token each), with the present
  tensors bound back as the next step's past through IOBinding (no copy between
  decode steps). Prefill first: a waiting request joins at the next token boundary;
- joining or leaving changes the rows: the past tensors are gathered, padded and
  concatenated once (host copies), and columns that every remaining row pads are cut.

Greedy only (the serving workload is greedy); tokens are the arg-max of host logits,
timestamped by the engine thread when the step returns. The scheduler's own batch size
per step is what :class:`~harness.serving.batching.BatchStats` records.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from harness.errors import Unsupported
from harness.generation.loop import left_pad
from harness.serving.batching import BatchingOptions, EngineThreadSession, LazyScorer, SteppedEngine
from harness.serving.session import GenerationRequest, ServingModel, ServingPlan


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    prompt: list[int]
    fresh: list[int] = field(default_factory=list)  # produced since the last collect
    produced: int = 0
    last: int = 0
    finished: bool = False

    def take(self, token: int, eos_id: Optional[int]) -> None:
        self.fresh.append(token)
        self.produced += 1
        self.last = token
        self.finished = self.produced >= self.request.max_tokens or (not self.request.ignore_eos and eos_id is not None and token == eos_id)


class OrtBatchedEngine(SteppedEngine):
    """Continuous batching over an :class:`~harness.backends.onnxruntime_generation.OrtStepper`."""

    def __init__(self, stepper: Any, kv_device: str, max_batch: int, max_batched_tokens: int, pad_id: int, eos_id: Optional[int]) -> None:
        self.stepper = stepper
        self.kv_device = kv_device
        self.max_batch = max_batch
        self.max_batched_tokens = max_batched_tokens
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.waiting: deque[_Sequence] = deque()
        self.rows: list[_Sequence] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.past: list[Any] = []

    def add(self, request: GenerationRequest, prompt: list[int]) -> _Sequence:
        sequence = _Sequence(request, prompt)
        self.waiting.append(sequence)
        return sequence

    def busy(self) -> bool:
        return bool(self.waiting or self.rows)

    def step(self) -> int:
        admitted = self._admit()
        if admitted:
            return self._prefill(admitted)
        return self._decode()

    def _admit(self) -> list[_Sequence]:
        """Waiting requests for one prefill: free rows, and at most ``max_batched_tokens`` padded tokens (>= 1 request)."""
        batch: list[_Sequence] = []
        longest = 0
        while self.waiting and len(self.rows) + len(batch) < self.max_batch:
            nxt = self.waiting[0]
            grown = max(longest, len(nxt.prompt))
            if batch and grown * (len(batch) + 1) > self.max_batched_tokens:
                break
            batch.append(self.waiting.popleft())
            longest = grown
        return batch

    def _prefill(self, batch: list[_Sequence]) -> int:
        ids, mask = left_pad([s.prompt for s in batch], self.pad_id)
        logits = self.stepper.prefill(ids, mask)
        for sequence, token in zip(batch, logits.argmax(-1)):
            sequence.take(int(token), self.eos_id)
        self._regroup(keep=[i for i, s in enumerate(self.rows) if not s.finished], joining=(batch, self._host(self.stepper.past), mask))
        return len(batch)

    def _decode(self) -> int:
        count = len(self.rows)
        self.mask = np.concatenate([self.mask, np.ones((count, 1), dtype=np.int64)], axis=1)
        self.stepper.past = self.past
        logits = self.stepper.decode(np.array([s.last for s in self.rows], dtype=np.int64), self.mask)
        self.past = self.stepper.past
        for sequence, token in zip(self.rows, logits.argmax(-1)):
            sequence.take(int(token), self.eos_id)
        if any(s.finished for s in self.rows):
            self._regroup(keep=[i for i, s in enumerate(self.rows) if not s.finished])
        return count

    def _regroup(self, keep: list[int], joining: Optional[tuple[list[_Sequence], list[np.ndarray], np.ndarray]] = None) -> None:
        """Rows ``keep`` of the running batch, then the joining sequences (unfinished ones), left-padded to one length."""
        past = [a[keep] for a in self._host(self.past)] if self.rows else []
        mask = self.mask[keep] if self.rows else np.zeros((0, 0), dtype=np.int64)
        rows = [self.rows[i] for i in keep]
        if joining is not None:
            sequences, new_past, new_mask = joining
            alive = [i for i, s in enumerate(sequences) if not s.finished]
            new_past, new_mask = [a[alive] for a in new_past], new_mask[alive]
            rows += [sequences[i] for i in alive]
            if past:
                length = max(mask.shape[1], new_mask.shape[1])
                past = [np.concatenate([_pad_left(a, length, axis=2), _pad_left(b, length, axis=2)]) for a, b in zip(past, new_past)]
                mask = np.concatenate([_pad_left(mask, length, axis=1), _pad_left(new_mask, length, axis=1)])
            else:
                past, mask = new_past, new_mask
        if not rows:
            self.rows, self.mask, self.past = [], np.zeros((0, 0), dtype=np.int64), []
            return
        first = int(np.argmax(mask.any(axis=0)))  # cut the columns every row pads
        self.rows, self.mask = rows, np.ascontiguousarray(mask[:, first:])
        self.past = [self._device(np.ascontiguousarray(a[:, :, first:])) for a in past]

    def _host(self, values: list[Any]) -> list[np.ndarray]:
        return [v.numpy() for v in values]

    def _device(self, array: np.ndarray) -> Any:
        import onnxruntime as ort

        if self.kv_device == "cpu":
            return ort.OrtValue.ortvalue_from_numpy(array)
        return ort.OrtValue.ortvalue_from_numpy(array, self.kv_device, 0)

    def collect(self, handle: _Sequence) -> tuple[list[int], bool]:
        tokens, handle.fresh = handle.fresh, []
        return tokens, handle.finished

    def cancel(self, handle: _Sequence) -> None:
        if handle in self.waiting:
            self.waiting.remove(handle)
        elif handle in self.rows:
            handle.finished = True
            self._regroup(keep=[i for i, s in enumerate(self.rows) if s is not handle])

    def metrics(self) -> dict[str, Any]:
        return {"running": len(self.rows), "past_tokens": int(self.mask.shape[1]) if self.rows else 0}


def _pad_left(array: np.ndarray, length: int, axis: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (length - array.shape[axis], 0)
    return np.pad(array, widths)


def prepare(backend: Any, model: ServingModel, plan: ServingPlan) -> EngineThreadSession:
    """The batched scheduler on the exported decoder (exported and validated on first use, then cached)."""
    from harness.generation.session import GenerationPlan

    precision = "fp32" if plan.precision == "auto" else plan.precision
    if precision != "fp32":
        raise Unsupported(f"onnxruntime serving runs the fp32 decoder export, not {precision}", "use scenario.precision=fp32")
    options: BatchingOptions = backend.options.serving
    source = model.source()
    generation = backend.prepare_generation(source, GenerationPlan(precision, options.max_batch, plan.max_prompt_tokens, plan.max_output_tokens))
    stepper = generation.stepper
    eos = source.config.get("eos_token_id")
    engine = OrtBatchedEngine(
        stepper, stepper.kv_device, options.max_batch, options.max_batched_tokens, generation.pad_id, int(eos) if isinstance(eos, int) else None
    )
    facts = {
        **generation.metrics(),
        "batching": (
            f"continuous: the harness's scheduler over the IOBinding decoder, up to {options.max_batch} sequences; "
            f"a step prefills waiting requests (<= {options.max_batched_tokens} padded tokens) or decodes every "
            "running one; joining and leaving rows regroup the left-padded past tensors"
        ),
        "concurrency": f"continuous batching, <= {options.max_batch} (harness scheduler)",
        "max_batch": options.max_batch,
        "max_batched_tokens": options.max_batched_tokens,
        "kv_cache": "per-sequence rows of past/present OrtValues, left-padded to the longest running sequence",
    }
    return EngineThreadSession(
        engine, model.tokenizer(), precision, facts, scorer=LazyScorer(lambda ids: generation), device=str(getattr(generation, "device", backend.device()))
    )
