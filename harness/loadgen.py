"""Load patterns beyond single-stream: MLPerf-LoadGen-style ``server`` and ``offline``.

``server``: queries arrive as a Poisson process at a target QPS and are served first
come, first served by one session; a query's latency is queueing plus service time.
The run is VALID when the latency percentile (p99) stays within the bound, the way
LoadGen's server scenario judges it, and the record says why when it is not. A
search finds the highest valid QPS.

The clock is injectable: real runs use ``perf_counter``/``sleep``; tests use a virtual
clock and a deterministic service time, so the validity boundary can be compared
with the analytic M/D/1 queue (:func:`md1_latency_cdf`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

import numpy as np


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep_until(self, t: float) -> None: ...


class RealClock:
    """Wall clock; sleeps (does not spin) until the next arrival."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, t: float) -> None:
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


@dataclass
class ServerResult:
    """Outcome of one server-mode run at a target QPS."""

    target_qps: float
    achieved_qps: float
    latency_bound_ms: float
    percentile: float
    latency_at_percentile_ms: float
    queries: int
    valid: bool
    reason: str
    latencies_ms: list[float] = field(repr=False, default_factory=list)

    def as_dict(self, keep_samples: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not keep_samples:
            out.pop("latencies_ms")
        return out


def run_server(
    call: Callable[[], Any],
    target_qps: float,
    latency_bound_ms: float,
    queries: int = 1000,
    percentile: float = 99.0,
    seed: int = 0,
    clock: Clock | None = None,
) -> ServerResult:
    """Serve ``queries`` Poisson arrivals at ``target_qps`` with one FIFO server (``call``)."""
    if target_qps <= 0 or queries < 1:
        raise ValueError("target_qps must be > 0 and queries >= 1")
    clock = clock or RealClock()
    gaps = np.random.default_rng(seed).exponential(1.0 / target_qps, size=queries)
    start = clock.now()
    arrivals = start + np.cumsum(gaps)
    latencies = []
    free_at = start
    for arrival in arrivals:
        begin = max(float(arrival), free_at)
        clock.sleep_until(begin)
        call()
        free_at = clock.now()
        latencies.append((free_at - float(arrival)) * 1000.0)
    elapsed = free_at - start
    tail = float(np.percentile(latencies, percentile))
    valid = tail <= latency_bound_ms
    reason = (
        f"p{percentile:g} latency {tail:.3f} ms <= bound {latency_bound_ms:g} ms"
        if valid
        else f"p{percentile:g} latency {tail:.3f} ms exceeds bound {latency_bound_ms:g} ms at {target_qps:g} QPS"
    )
    return ServerResult(target_qps, queries / elapsed, latency_bound_ms, percentile, tail, queries, valid, reason, latencies)


def find_max_qps(
    call: Callable[[], Any],
    latency_bound_ms: float,
    low_qps: float,
    high_qps: float,
    queries: int = 1000,
    steps: int = 8,
    seed: int = 0,
    clock: Clock | None = None,
) -> tuple[float, list[ServerResult]]:
    """Bisect for the highest QPS whose server run is VALID; returns it and every trial."""
    trials = []
    best = 0.0
    for _ in range(steps):
        mid = (low_qps + high_qps) / 2
        result = run_server(call, mid, latency_bound_ms, queries, seed=seed, clock=clock)
        trials.append(result)
        if result.valid:
            best, low_qps = mid, mid
        else:
            high_qps = mid
    return best, trials


def md1_latency_cdf(t: float, arrival_rate: float, service_time: float) -> float:
    """P(latency <= t) in an M/D/1 queue: Poisson arrivals, constant service time D.

    Latency = waiting + D; the waiting time CDF is Erlang's/Crommelin's formula
    P(W <= w) = (1 - rho) * sum_{k=0}^{floor(w/D)} [lam (kD - w)]^k / k! * exp(-lam (kD - w)).
    """
    rho = arrival_rate * service_time
    if rho >= 1:
        return 0.0
    w = t - service_time
    if w < 0:
        return 0.0
    total = 0.0
    for k in range(int(math.floor(w / service_time)) + 1):
        x = arrival_rate * (k * service_time - w)
        total += x**k / math.factorial(k) * math.exp(-x)
    return min(1.0, (1 - rho) * total)


def md1_max_qps(latency_bound: float, service_time: float, percentile: float = 99.0) -> float:
    """Highest arrival rate whose latency percentile is within ``latency_bound`` (M/D/1)."""
    low, high = 0.0, 1.0 / service_time
    for _ in range(60):
        mid = (low + high) / 2
        if md1_latency_cdf(latency_bound, mid, service_time) >= percentile / 100.0:
            low = mid
        else:
            high = mid
    return low


def server_metrics(call: Callable[[], Any], options: Any, capacity_qps: float) -> dict[str, Any]:
    """The record's ``server`` section: one run at ``options.qps`` (default: half the
    single-stream capacity) and, with ``options.search``, the highest valid QPS."""
    target = options.qps or capacity_qps / 2
    result = run_server(call, target, options.latency_bound_ms, options.queries, seed=options.seed)
    out: dict[str, Any] = {"result": "VALID" if result.valid else "INVALID", **result.as_dict()}
    if options.search:
        best, trials = find_max_qps(call, options.latency_bound_ms, capacity_qps / 20, capacity_qps * 1.2, options.queries, steps=6, seed=options.seed)
        out["max_valid_qps"] = best
        out["search"] = [{"qps": t.target_qps, "valid": t.valid, "p99_ms": t.latency_at_percentile_ms} for t in trials]
    return out
