"""Where a training rank's memory and step time go, measured on its real tensors.

- Model state: bytes of this rank's parameters, gradients and optimizer state, summed
  over the tensors it actually holds (a ``DTensor``'s local shard, a pipeline stage's
  own parameters), so fsdp's 1/N shards and tp's split matrices show as they are.
- Activations: the peak bytes autograd keeps for backward during one training step,
  counted with ``torch.autograd.graph.saved_tensors_hooks`` (each storage once, while
  it is alive; parameters left out, FSDP's all-gathered ones included; autocast's
  low-precision weight copies counted).
  Checkpointed blocks save nothing inside; the inputs the checkpoint keeps until their
  backward are counted through a forward pre-hook on each such block.
- Compute vs communication: ``torch.profiler`` over a few warm-up steps; communication
  is the wall time during which at least one collective or point-to-point operation was
  in flight (the union of the profiler's ``gloo:*``/``nccl:*`` operation intervals,
  which run on the backend's own threads or streams), compute the rest of the step.
  Where communication overlaps computation (FSDP's prefetch, nccl streams), the
  overlap counts as communication, so compute is a lower bound.

The arithmetic is in plain functions with hand-computed tests (tests/test_parallel_units.py).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

MIB = 2**20
#: Profiler event names of communication operations (gloo's worker threads, nccl kernels).
COMM_PREFIXES = ("gloo:", "nccl:", "ncclDevKernel", "ncclKernel")


def storage_ptr(tensor: Any) -> int:
    """The address of the storage behind this rank's part of ``tensor``; 0 when it has
    none (meta tensors, a freed FSDP buffer, a wrapper subclass without data)."""
    from harness.training.parallel import local

    try:
        shard = local(tensor)
        return 0 if shard.device.type == "meta" else shard.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes this rank holds for ``tensors`` (DTensors by their local shard), each storage once."""
    from harness.training.parallel import local

    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        shard = local(tensor)
        if shard.numel() == 0:
            continue
        key = (shard.untyped_storage().data_ptr(), shard.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total += shard.untyped_storage().nbytes()
    return total


def optimizer_tensors(optimizer: Any) -> list[Any]:
    """Every tensor in the optimizer's state (Adam's moments, SGD's momentum buffers...)."""
    import torch

    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def state_bytes(module: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of this rank's parameters, gradients and optimizer state, taken at an update
    (after the optimizer step, before the gradients are cleared): then FSDP's parameters
    are the sharded ones, which its root module leaves unsharded between an evaluation's
    forward and the next backward."""
    return {
        "params": tensor_bytes(module.parameters()),
        "grads": tensor_bytes(p.grad for p in module.parameters()),
        "optimizer": tensor_bytes(optimizer_tensors(optimizer)),
    }


def state_mib(peak: dict[str, int]) -> dict[str, float]:
    """``params_mib``, ``grads_mib``, ``optimizer_mib`` and their sum ``model_state_mib``."""
    figures = {f"{key}_mib": peak.get(key, 0) / MIB for key in ("params", "grads", "optimizer")}
    figures["model_state_mib"] = sum(figures.values())
    return figures


class SavedActivations:
    """Peak bytes of tensors autograd saves for backward while active (see the module doc)."""

    def __init__(self, parameters: Iterable[Any]) -> None:
        self.parameter_ptrs = {storage_ptr(p) for p in parameters}
        self.live: dict[int, list[int]] = {}  # storage ptr -> [bytes, holders]
        self.current = 0
        self.peak = 0

    def _pack(self, tensor: Any) -> Any:
        import torch

        if isinstance(tensor, torch.nn.Parameter):
            return tensor
        ptr = storage_ptr(tensor)
        if ptr == 0 or ptr in self.parameter_ptrs:
            return tensor
        from harness.training.parallel import local

        entry = self.live.setdefault(ptr, [local(tensor).untyped_storage().nbytes(), 0])
        if entry[1] == 0:
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        return _Held(tensor, self, ptr)

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def _keep_input(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A checkpointed block's hidden-state input: the checkpoint keeps it until that
        block's backward, so it counts for as long as the tensor lives."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is not None and hasattr(hidden, "untyped_storage"):
            held = self._pack(hidden)
            if isinstance(held, _Held):
                weakref.finalize(hidden, _drop, held)

    def _note_parameters(self, module: Any, args: Any) -> None:
        """Before each submodule runs: its parameters as they are now. FSDP swaps in the
        unsharded (all-gathered) parameters for the forward and frees them after; saved
        views of those are parameters, not activations."""
        self.parameter_ptrs.update(storage_ptr(p) for p in module.parameters(recurse=False))

    @contextlib.contextmanager
    def measure(self, module: Any = None) -> Iterator["SavedActivations"]:
        """Count while active; ``module``'s checkpointed blocks (if any) count their inputs."""
        import torch

        modules = list(module.modules()) if module is not None else []
        handles = [m.register_forward_pre_hook(self._note_parameters) for m in modules]
        handles += [block.register_forward_pre_hook(self._keep_input, with_kwargs=True) for block in modules if getattr(block, "harness_checkpointed", False)]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
                yield self
        finally:
            for handle in handles:
                handle.remove()

    @property
    def peak_mib(self) -> float:
        return self.peak / MIB


class _Held:
    """A saved tensor, reporting to its meter when autograd drops it (after its backward)."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Any, meter: SavedActivations, ptr: int) -> None:
        self.tensor = tensor
        weakref.finalize(self, meter._release, ptr)


def _drop(held: Any) -> None:
    """The finaliser's reference to ``held`` goes with it; nothing else to do."""


def _unpack(held: Any) -> Any:
    return held.tensor if isinstance(held, _Held) else held


@dataclass(frozen=True)
class Interval:
    start_us: float
    end_us: float


def union_us(intervals: Sequence[Interval]) -> float:
    """Total length of the union of ``intervals`` (overlaps counted once)."""
    total = 0.0
    end = float("-inf")
    for item in sorted(intervals, key=lambda i: i.start_us):
        if item.end_us <= end:
            continue
        total += item.end_us - max(item.start_us, end)
        end = item.end_us
    return total


def split_step(step_ms: float, comm_intervals: Sequence[Interval], window: Interval) -> dict[str, float]:
    """``communication_ms`` (in-flight union clipped to the step's window) and ``compute_ms`` (the rest)."""
    clipped = [
        Interval(max(i.start_us, window.start_us), min(i.end_us, window.end_us))
        for i in comm_intervals
        if i.end_us > window.start_us and i.start_us < window.end_us
    ]
    comm_ms = min(union_us(clipped) / 1000.0, step_ms)
    return {"step_ms": step_ms, "communication_ms": comm_ms, "compute_ms": step_ms - comm_ms}


class StepProfiler:
    """Profiles whole training steps (``torch.profiler``) and splits each one's time."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.steps: list[dict[str, float]] = []

    @contextlib.contextmanager
    def profile(self) -> Iterator[None]:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            yield
            step_ms = (time.perf_counter() - started) * 1000.0
        events = [e for e in prof.events() if e.name.startswith(COMM_PREFIXES)]
        intervals = [Interval(e.time_range.start, e.time_range.end) for e in events]
        starts = [e.time_range.start for e in prof.events()]
        origin = min(starts) if starts else 0.0
        window = Interval(origin, origin + step_ms * 1000.0)
        self.steps.append({**split_step(step_ms, intervals, window), "communication_ops": len(events)})

    def summary(self, profiled: Sequence[int]) -> dict[str, Any]:
        """The mean split over the profiled steps, with what was measured."""
        if not self.steps:
            return {"profiled_steps": [], "reason": "no step profiled (one process, or scenario.profile_steps=0, or no warm-up step after step 1)"}
        n = len(self.steps)
        mean = {key: sum(s[key] for s in self.steps) / n for key in ("step_ms", "communication_ms", "compute_ms")}
        return {
            "profiled_steps": list(profiled),
            **mean,
            "communication_share": mean["communication_ms"] / mean["step_ms"] if mean["step_ms"] > 0 else None,
            "communication_ops_per_step": sum(s["communication_ops"] for s in self.steps) / n,
            "method": "torch.profiler on warm-up steps: communication = union of gloo/nccl operation intervals "
            "in the step, compute = the rest (overlap counts as communication)",
        }
