"""Training figures: throughput without warm-up, time to target accuracy, scaling.

Each formula here has a unit test with hand-computed numbers
(tests/test_training_units.py). Step latencies are per optimizer step in ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence


def measured_steps(step_ms: Sequence[float], excluded: int) -> list[float]:
    """The step latencies that count: all but the first ``excluded`` (warm-up) steps.

    The first steps pay for allocator growth, lazy initialisation and (on GPUs)
    kernel selection; counting them would understate the steady-state rate.
    """
    if excluded >= len(step_ms):
        raise ValueError(f"{excluded} warm-up steps excluded leave none of {len(step_ms)} steps to measure")
    return list(step_ms[excluded:])


def samples_per_second(step_ms: Sequence[float], samples_per_step: int, excluded: int) -> float:
    """``samples_per_step x kept steps / kept seconds``, warm-up steps left out.

    ``samples_per_step`` is the global batch (per-process batch x accumulation x world
    size), so in a data-parallel run this is the global rate.
    """
    kept = measured_steps(step_ms, excluded)
    seconds = sum(kept) / 1000.0
    if seconds <= 0:
        raise ValueError("measured step time must be positive")
    return samples_per_step * len(kept) / seconds


@dataclass(frozen=True)
class TargetResult:
    """When the target accuracy was first reached, or why it was not."""

    seconds: Optional[float]
    step: Optional[int]
    reason: Optional[str]


def time_to_target(evals: Sequence[tuple[int, float, float]], target: Optional[float], metric: str = "accuracy", higher_is_better: bool = True) -> TargetResult:
    """First evaluation at or past ``target``; ``evals`` are ``(step, elapsed_s, value)``.

    Past means ``>= target`` for a metric where higher is better (accuracy) and
    ``<= target`` otherwise (perplexity). ``elapsed_s`` is wall clock since the first
    training step, evaluations included (as MLPerf's time-to-train counts them), taken
    when that evaluation finished.
    """
    if target is None:
        return TargetResult(None, None, f"no target: set scenario.target_{metric}")
    for step, elapsed, value in evals:
        if (value >= target) if higher_is_better else (value <= target):
            return TargetResult(elapsed, step, None)
    if not evals:
        return TargetResult(None, None, f"target {target:g} not reached: no evaluation ran")
    pick = max if higher_is_better else min
    best_step, _, best = pick(evals, key=lambda e: e[2])
    return TargetResult(None, None, f"target {target:g} never reached; best {metric} {best:.4f} at step {best_step}")


def scaling_efficiency(global_samples_per_s: float, world_size: int, single_samples_per_s: float) -> float:
    """Data-parallel efficiency: ``global rate / (world size x 1-process rate)``; 1.0 is perfect."""
    if world_size < 1 or single_samples_per_s <= 0:
        raise ValueError("world size must be >= 1 and the 1-process rate positive")
    return global_samples_per_s / (world_size * single_samples_per_s)


def loss_points(losses: Sequence[float], interval: int) -> list[list[float]]:
    """``[step, mean loss]`` every ``interval`` steps (steps count from 1), plus a last partial window."""
    points = []
    for end in range(interval, len(losses) + interval, interval):
        window = losses[end - interval : min(end, len(losses))]
        if window:
            points.append([min(end, len(losses)), sum(window) / len(window)])
    return points


#: Per-rank memory figures summarised for report columns (the busiest rank bounds the device).
RANK_MEMORY_KEYS = ("params_mib", "grads_mib", "optimizer_mib", "model_state_mib", "activations_mib", "peak_rss_mib", "peak_allocated_mib")


def max_over_ranks(per_rank: Optional[Sequence[dict[str, Any]]]) -> Optional[dict[str, float]]:
    """Each memory figure's maximum over the ranks (figures no rank has are left out)."""
    if not per_rank:
        return None
    out = {}
    for key in RANK_MEMORY_KEYS:
        values = [r[key] for r in per_rank if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = max(values)
    return out
