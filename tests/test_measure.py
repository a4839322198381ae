"""The measurement loop's stopping rules, with a fake clock-free session."""

import time

from harness.backend import Session
from harness.measure import MeasurePlan, measure


class FixedTimer:
    """Reports a fixed duration per call without sleeping."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self, fn, *args):
        return fn(*args), self.seconds


class CountingSession(Session):
    def __init__(self, seconds: float = 0.001) -> None:
        self.calls = 0
        self.timer = FixedTimer(seconds)

    def run(self, inputs):
        self.calls += 1
        time.sleep(0.0005)  # real work takes time; keeps max_iters out of duration tests
        return inputs

    def fetch(self, outputs):
        return {}


def test_warmup_calls_are_not_samples():
    session = CountingSession()
    result = measure(session, None, MeasurePlan(warmup_iters=3, min_iters=7, min_duration_s=0.0))
    assert len(result.warmup_ms) == 3
    assert len(result.samples_ms) == 7
    assert session.calls == 10
    assert all(s == 1.0 for s in result.samples_ms)


def test_min_iterations_and_duration_both_required():
    session = CountingSession()
    result = measure(session, None, MeasurePlan(warmup_iters=0, min_iters=3, min_duration_s=0.05))
    assert len(result.samples_ms) >= 3
    assert result.ended_at - result.started_at >= 0.05


def test_max_iters_bounds_the_run():
    session = CountingSession()
    result = measure(session, None, MeasurePlan(warmup_iters=0, min_iters=50, min_duration_s=10.0, max_iters=12))
    assert len(result.samples_ms) == 12


def test_progress_callback_is_called_for_long_runs():
    calls = []
    measure(CountingSession(), None, MeasurePlan(0, 1, 0.7, 5.0), on_progress=lambda n, s: calls.append((n, s)))
    assert calls and all(n > 0 for n, _ in calls)
