"""Load plans over several steps: guidellm-style sweeps and the SLO rate search.

Sweep (guidellm's definition, in K steps): first *synchronous* (one request at a time:
the rate a lone user sees), then *throughput* (``max_concurrency`` requests always in
flight: the saturation rate), then K - 2 fixed-rate steps evenly spaced between the two
measured rates, ``linspace(sync, throughput, K - 1)[1:]``: the last one offers the
saturation rate itself. Rates come from the finished requests per second of the first
two steps, so the sweep adapts to the engine.

Search: the highest offered rate whose step meets the SLOs (``VALID`` verdict),
found by bisection between a rate known to be light and one known to be too much,
the way MLPerf's server scenario is tuned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

import numpy as np

from harness.serving.load import Load


def synchronous() -> Load:
    return Load("concurrency", concurrency=1, label="synchronous")


def throughput(max_concurrency: int) -> Load:
    return Load("concurrency", concurrency=max_concurrency, label="throughput")


def sweep_rates(sync_rate: float, saturation_rate: float, steps: int) -> list[float]:
    """The K - 2 fixed rates of a K-step sweep: ``linspace(sync, saturation, K - 1)[1:]``.

    A saturation rate at or below the synchronous one (an engine that does not gain
    from concurrency) still gives K - 2 distinct rates, spread up to twice the higher
    of the two, so the sweep shows where latency breaks down instead of collapsing.
    """
    if steps < 3:
        return []
    if sync_rate <= 0 and saturation_rate <= 0:
        raise ValueError("no request finished in the synchronous or throughput step: nothing to sweep")
    low, high = sync_rate, saturation_rate
    if high <= low * 1.01:
        low, high = min(low, high), 2.0 * max(low, high)
    return [float(r) for r in np.linspace(low, high, steps - 1)[1:]]


@dataclass
class SearchResult:
    """Outcome of the bisection: the best rate that met the SLOs (None if none did)."""

    best_rate: Optional[float]
    low: float
    high: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"max_rate_meeting_slo": self.best_rate, "low": self.low, "high": self.high, "trials": self.trials, "reason": self.reason}


async def search_max_rate(
    meets_slo_at: Callable[[float], Awaitable[tuple[bool, dict[str, Any]]]],
    low: float,
    high: float,
    trials: int,
) -> SearchResult:
    """Bisect ``[low, high]`` for the highest rate where ``meets_slo_at(rate)`` holds.

    ``meets_slo_at`` runs one step at that rate and returns (VALID?, a summary of the
    step for the record). ``low`` is tried first: if even it fails, no rate is claimed.
    """
    if not 0 < low < high:
        raise ValueError(f"search bounds must satisfy 0 < low < high, got {low}, {high}")
    result = SearchResult(None, low, high)
    ok, summary = await meets_slo_at(low)
    result.trials.append({"rate": low, "valid": ok, **summary})
    if not ok:
        result.reason = f"even the lowest rate tried ({low:.4g} req/s) misses the SLOs"
        return result
    best, lo, hi = low, low, high
    for _ in range(max(0, trials - 1)):
        mid = (lo + hi) / 2
        ok, summary = await meets_slo_at(mid)
        result.trials.append({"rate": mid, "valid": ok, **summary})
        if ok:
            best, lo = mid, mid
        else:
            hi = mid
    result.best_rate = best
    result.reason = f"highest rate meeting the SLOs within [{low:.4g}, {high:.4g}] req/s after {len(result.trials)} trials"
    return result
