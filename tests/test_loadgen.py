"""Server load pattern against the analytic M/D/1 queue, with a virtual clock."""

import math

import pytest

from harness import loadgen


class VirtualClock:
    """Time advances only when the fake backend serves or the generator waits."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)


def fake_backend(clock: VirtualClock, service_s: float):
    def call():
        clock.t += service_s

    return call


SERVICE = 0.010  # 10 ms per query, deterministic
BOUND_MS = 50.0


def test_md1_cdf_by_hand():
    # no queueing possible below one service time; with rho -> 0 latency == D
    assert loadgen.md1_latency_cdf(0.009, 10.0, SERVICE) == 0.0
    assert loadgen.md1_latency_cdf(0.0100001, 1e-6, SERVICE) == pytest.approx(1.0, abs=1e-5)
    # first step of the formula: P(W <= w) for w < D is (1 - rho) * exp(lam * w)
    lam, w = 50.0, 0.004
    assert loadgen.md1_latency_cdf(SERVICE + w, lam, SERVICE) == pytest.approx((1 - lam * SERVICE) * math.exp(lam * w))
    assert loadgen.md1_latency_cdf(1.0, 100.0, SERVICE) == 0.0  # rho = 1: unstable


def test_server_validity_boundary_matches_md1():
    boundary = loadgen.md1_max_qps(BOUND_MS / 1000.0, SERVICE)
    assert 50 < boundary < 100  # sanity: below the 100 QPS capacity
    clock = VirtualClock()
    below = loadgen.run_server(fake_backend(clock, SERVICE), 0.9 * boundary, BOUND_MS, queries=60000, seed=1, clock=clock)
    clock = VirtualClock()
    above = loadgen.run_server(fake_backend(clock, SERVICE), 1.1 * boundary, BOUND_MS, queries=60000, seed=1, clock=clock)
    assert below.valid and not above.valid
    assert "exceeds bound" in above.reason


def test_search_finds_the_analytic_max_qps():
    boundary = loadgen.md1_max_qps(BOUND_MS / 1000.0, SERVICE)
    clock = VirtualClock()
    best, trials = loadgen.find_max_qps(fake_backend(clock, SERVICE), BOUND_MS, 1.0, 100.0, queries=40000, steps=10, clock=clock)
    assert best == pytest.approx(boundary, rel=0.08)
    assert len(trials) == 10


def test_light_load_latency_is_the_service_time():
    clock = VirtualClock()
    result = loadgen.run_server(fake_backend(clock, SERVICE), 0.5, BOUND_MS, queries=200, clock=clock)
    assert min(result.latencies_ms) == pytest.approx(10.0)
    assert result.achieved_qps == pytest.approx(0.5, rel=0.25)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        loadgen.run_server(lambda: None, 0, BOUND_MS)
