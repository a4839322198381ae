"""Latency statistics and throughput formulas.

Every formula here has a unit test with hand-computed numbers (tests/test_stats.py).
Percentiles use linear interpolation between closest ranks (numpy's default, the same
as Excel's PERCENTILE.INC); ``std`` is the sample standard deviation (ddof=1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

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


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a statistic."""

    low: float
    high: float
    confidence: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_interval(samples_ms: Sequence[float], percentile: float = 50.0, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Interval:
    """Percentile-bootstrap confidence interval of a latency percentile (scipy.stats.bootstrap).

    Seeded, so the same samples give the same interval. Fewer than 2 distinct values
    give a zero-width interval at that value (bootstrap is undefined there).
    """
    from scipy import stats as sps

    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples for a confidence interval")
    if np.unique(values).size < 2:
        only = float(values[0])
        return Interval(only, only, confidence)
    result = sps.bootstrap(
        (values,),
        lambda x, axis: np.percentile(x, percentile, axis=axis),
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        batch=50,  # bounds memory: 50 resamples of the samples at a time
        rng=np.random.default_rng(seed),
    )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high), confidence)


@dataclass(frozen=True)
class Outliers:
    """Samples beyond Tukey's fences (Q1 - k*IQR, Q3 + k*IQR): counted, never dropped."""

    low: int
    high: int
    lower_fence: float
    upper_fence: float
    method: str = "tukey"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tukey_outliers(samples_ms: Sequence[float], k: float = 1.5) -> Outliers:
    """Count samples outside Tukey's fences with quartiles by linear interpolation."""
    values = np.asarray(samples_ms, dtype=np.float64)
    q1, q3 = np.percentile(values, [25, 75])
    iqr = q3 - q1
    lower, upper = float(q1 - k * iqr), float(q3 + k * iqr)
    return Outliers(int((values < lower).sum()), int((values > upper).sum()), lower, upper)


#: Coefficient of variation above which a run is flagged noisy.
NOISE_CV_THRESHOLD = 0.10


def noise_report(samples_ms: Sequence[float], cv_threshold: float = NOISE_CV_THRESHOLD) -> dict[str, Any]:
    """Noise figures for a record: CV, the threshold, a verdict, outliers, CIs of p50/p99."""
    cv = coefficient_of_variation(samples_ms)
    return {
        "cv": cv,
        "cv_threshold": cv_threshold,
        "noisy": cv > cv_threshold,
        "outliers": tukey_outliers(samples_ms).as_dict(),
        "p50_ci": bootstrap_interval(samples_ms, 50).as_dict(),
        "p99_ci": bootstrap_interval(samples_ms, 99).as_dict(),
    }
