"""The measurement loop: warm up, then time calls until duration *and* count are met.

Both a minimum duration and a minimum count must be reached so that fast models
get enough samples and slow ones still run long enough to expose noise; a maximum
duration bounds the run. The loop does nothing per iteration but call the session's
timer and append one float, so its overhead over a bare loop stays negligible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from harness import stages
from harness.backend import Session


@dataclass(frozen=True)
class MeasurePlan:
    """How long to warm up and measure."""

    warmup_iters: int = 5
    min_iters: int = 20
    min_duration_s: float = 2.0
    max_duration_s: float = 60.0
    max_iters: int = 100_000


@dataclass
class Measurement:
    """Raw latency samples (ms) and the wall-clock window they were taken in."""

    samples_ms: list[float]
    started_at: float
    ended_at: float
    warmup_ms: list[float]


def measure(
    session: Session,
    inputs: Any,
    plan: MeasurePlan,
    on_progress: Callable[[int, float], None] | None = None,
) -> Measurement:
    """Run ``session.run(inputs)`` under the session's timer according to ``plan``.

    ``on_progress(iterations, elapsed_s)`` is called about twice a second.
    """
    timer = session.timer
    run = session.run
    warmup_ms = []
    with stages.timed("warmup"):
        for _ in range(plan.warmup_iters):
            _, seconds = timer.time(run, inputs)
            warmup_ms.append(seconds * 1000.0)
    with stages.timed("measure"):
        return _timed_loop(timer, run, inputs, plan, on_progress, warmup_ms)


def _timed_loop(timer: Any, run: Any, inputs: Any, plan: MeasurePlan, on_progress: Callable[[int, float], None] | None, warmup_ms: list[float]) -> Measurement:
    """The measured calls: nothing per iteration but the timer, one append and the stop test."""
    samples: list[float] = []
    append = samples.append
    clock = time.perf_counter
    started = clock()
    started_wall = time.time()
    next_report = started + 0.5
    while True:
        _, seconds = timer.time(run, inputs)
        append(seconds * 1000.0)
        now = clock()
        elapsed = now - started
        count = len(samples)
        if count >= plan.max_iters or elapsed >= plan.max_duration_s:
            break
        if count >= plan.min_iters and elapsed >= plan.min_duration_s:
            break
        if on_progress is not None and now >= next_report:
            on_progress(count, elapsed)
            next_report = now + 0.5
    return Measurement(samples, started_wall, time.time(), warmup_ms)
