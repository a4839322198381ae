"""Statistics and throughput formulas against hand-computed numbers."""

import math

import pytest

from harness import stats


def test_percentiles_linear_interpolation_by_hand():
    # samples 1..10: rank = p/100*(n-1); p50 -> 4.5 -> 5.5; p90 -> 8.1 -> 9.1; p95 -> 8.55 -> 9.55; p99 -> 8.91 -> 9.91
    s = stats.summarize([10, 1, 9, 2, 8, 3, 7, 4, 6, 5])
    assert s.p50 == pytest.approx(5.5)
    assert s.p90 == pytest.approx(9.1)
    assert s.p95 == pytest.approx(9.55)
    assert s.p99 == pytest.approx(9.91)
    assert (s.min, s.max, s.count) == (1, 10, 10)
    assert s.mean == pytest.approx(5.5)
    # sample std of 1..10: sqrt(sum((x-5.5)^2)/9) = sqrt(82.5/9)
    assert s.std == pytest.approx(math.sqrt(82.5 / 9))


def test_single_sample_has_zero_std_and_equal_percentiles():
    s = stats.summarize([4.0])
    assert s.std == 0.0 and s.p50 == s.p99 == s.min == s.max == 4.0 and s.count == 1


def test_empty_samples_are_an_error():
    with pytest.raises(ValueError):
        stats.summarize([])


def test_samples_per_second_by_hand():
    # batch 8, four calls of 50 ms = 0.2 s for 32 samples -> 160 samples/s
    assert stats.samples_per_second(8, [50, 50, 50, 50]) == pytest.approx(160.0)
    # batch 1, calls of 10 and 30 ms -> 2 samples in 0.04 s -> 50 samples/s
    assert stats.samples_per_second(1, [10, 30]) == pytest.approx(50.0)


def test_tokens_per_second_by_hand():
    assert stats.tokens_per_second(160.0, 128) == pytest.approx(20480.0)


def test_coefficient_of_variation_by_hand():
    # samples 2, 4: mean 3, sample std sqrt(2) -> cv = sqrt(2)/3
    assert stats.coefficient_of_variation([2, 4]) == pytest.approx(math.sqrt(2) / 3)
    assert stats.coefficient_of_variation([5]) == 0.0


def test_zero_time_throughput_is_an_error():
    with pytest.raises(ValueError):
        stats.samples_per_second(1, [0.0])


def test_tukey_outliers_by_hand():
    # 1..8 and 100: Q1 = 3, Q3 = 7 (linear), IQR 4 -> fences -3 and 13 -> one high outlier
    o = stats.tukey_outliers([1, 2, 3, 4, 5, 6, 7, 8, 100])
    assert (o.low, o.high) == (0, 1)
    assert (o.lower_fence, o.upper_fence) == (pytest.approx(-3.0), pytest.approx(13.0))


def test_bootstrap_interval_brackets_the_median_and_is_seeded():
    import numpy as np

    samples = list(np.random.default_rng(3).normal(10.0, 1.0, size=400))
    ci = stats.bootstrap_interval(samples, 50)
    assert ci.low < float(np.median(samples)) < ci.high
    assert ci.high - ci.low < 0.5  # ~ 2 * 1.96 * 1.2533 * sigma / sqrt(n) = 0.25
    assert ci == stats.bootstrap_interval(samples, 50)


def test_bootstrap_of_constant_samples_is_zero_width():
    ci = stats.bootstrap_interval([2.0, 2.0, 2.0], 99)
    assert (ci.low, ci.high) == (2.0, 2.0)


def test_noise_report_flags_high_variation():
    quiet = stats.noise_report([10, 10.1, 9.9, 10.05, 9.95])
    noisy = stats.noise_report([1, 10, 1, 10, 1, 10])
    assert not quiet["noisy"] and noisy["noisy"]
    assert noisy["cv_threshold"] == stats.NOISE_CV_THRESHOLD
