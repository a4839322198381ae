"""Latency statistics and throughput formulas.

Every formula here has a unit test with hand-computed numbers (tests/test_stats.py).
Percentiles use linear interpolation between closest ranks (numpy's default, the same
as Excel's PERCENTILE.INC); ``std`` is the sample standard deviation (ddof=1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples, all in milliseconds except ``count``."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """Summarize latency samples (ms). At least one sample is required."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latency samples to summarize")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return LatencyStats(
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        mean=float(values.mean()),
        std=std,
        min=float(values.min()),
        max=float(values.max()),
        count=int(values.size),
    )


def samples_per_second(batch_size: int, latencies_ms: Sequence[float]) -> float:
    """Sequential (single-stream) throughput: samples processed per second of busy time.

    ``batch_size * len(latencies) / sum(latencies in s)``: each call processes one
    batch, calls run back to back.
    """
    total_s = float(np.sum(latencies_ms)) / 1000.0
    if total_s <= 0:
        raise ValueError("total measured time must be positive")
    return batch_size * len(latencies_ms) / total_s


def tokens_per_second(samples_per_s: float, seq_len: int) -> float:
    """Token throughput of a text model: every sample carries ``seq_len`` tokens."""
    return samples_per_s * seq_len


def coefficient_of_variation(samples_ms: Sequence[float]) -> float:
    """Sample std divided by mean: the noise figure reported beside latencies."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size < 2 or values.mean() == 0:
        return 0.0
    return float(values.std(ddof=1) / values.mean())
