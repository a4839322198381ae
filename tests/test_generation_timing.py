"""Generation timing formulas on fake timestamps, every number computed by hand."""

from __future__ import annotations

import math

import pytest

from harness.generation.session import GenerationOutput
from harness.generation.timing import call_phases, generation_metrics, request_timing, summary_ms, token_rates

# Call A: two prompts of 4 tokens decoded together from t=10.0; tokens at 10.5, 10.7, 11.0.
CALL_A = [GenerationOutput([7, 8, 9], [10.5, 10.7, 11.0], 10.0, 4) for _ in range(2)]
# Call B: one prompt of 5 tokens from t=20.0; tokens at 20.1, 20.3.
CALL_B = [GenerationOutput([1, 2], [20.1, 20.3], 20.0, 5)]


def test_request_timing_by_hand() -> None:
    a = request_timing(CALL_A[0])
    assert a.ttft_s == pytest.approx(0.5)  # 10.5 - 10.0
    assert a.e2e_s == pytest.approx(1.0)  # 11.0 - 10.0
    assert a.tpot_s == pytest.approx(0.25)  # (1.0 - 0.5) / (3 - 1)
    assert a.itl_s == pytest.approx((0.2, 0.3))  # 10.7 - 10.5, 11.0 - 10.7
    assert (a.tokens, a.prompt_tokens) == (3, 4)
    b = request_timing(CALL_B[0])
    assert (b.ttft_s, b.e2e_s, b.tpot_s) == pytest.approx((0.1, 0.3, 0.2))


def test_single_token_request_has_no_tpot_and_no_gap() -> None:
    one = request_timing(GenerationOutput([5], [3.25], 3.0, 2))
    assert one.ttft_s == pytest.approx(0.25) and one.e2e_s == pytest.approx(0.25)
    assert one.tpot_s is None and one.itl_s == ()


def test_call_phases_split_at_the_last_first_token() -> None:
    # A streamed batch: request 0's first token at 0.2, request 1's at 0.4; last tokens at 1.0 and 0.9.
    outputs = [GenerationOutput([1, 2, 3], [0.2, 0.6, 1.0], 0.0, 10), GenerationOutput([4, 5], [0.4, 0.9], 0.0, 6)]
    phases = call_phases(outputs)
    assert phases.prefill_s == pytest.approx(0.4)  # max first token time - start
    assert phases.decode_s == pytest.approx(0.6)  # max last token time - 0.4
    assert phases.busy_s == pytest.approx(1.0)
    assert (phases.prompt_tokens, phases.decode_tokens, phases.output_tokens, phases.requests) == (16, 3, 5, 2)


def test_token_rates_by_hand() -> None:
    rates = token_rates([call_phases(CALL_A), call_phases(CALL_B)])
    # prefill: (4 + 4 + 5) tokens / (0.5 + 0.1) s
    assert rates["prefill_tokens_per_s"] == pytest.approx(13 / 0.6)
    # decode: (2 + 2 + 1) tokens after the first / ((11.0 - 10.5) + (20.3 - 20.1)) s
    assert rates["decode_tokens_per_s"] == pytest.approx(5 / 0.7)
    # output: (3 + 3 + 2) tokens / (1.0 + 0.3) s busy
    assert rates["output_tokens_per_s"] == pytest.approx(8 / 1.3)
    assert rates["requests_per_s"] == pytest.approx(3 / 1.3)


def test_decode_rate_is_undefined_for_single_token_calls() -> None:
    rates = token_rates([call_phases([GenerationOutput([5], [1.5], 1.0, 3)])])
    assert rates["decode_tokens_per_s"] is None
    assert rates["output_tokens_per_s"] == pytest.approx(2.0)  # 1 token / 0.5 s


def test_generation_metrics_summaries_in_ms() -> None:
    metrics = generation_metrics([CALL_A, CALL_B], keep_samples=True)
    ttft = metrics["ttft_ms"]
    assert ttft["samples"] == pytest.approx([500.0, 500.0, 100.0])
    assert ttft["p50"] == pytest.approx(500.0) and ttft["mean"] == pytest.approx(1100 / 3)
    assert ttft["min"] == pytest.approx(100.0) and ttft["count"] == 3
    assert metrics["tpot_ms"]["samples"] == pytest.approx([250.0, 250.0, 200.0])
    itl = metrics["itl_ms"]
    assert itl["samples"] == pytest.approx([200.0, 300.0, 200.0, 300.0, 200.0])
    assert itl["p50"] == pytest.approx(200.0) and itl["mean"] == pytest.approx(240.0)
    assert metrics["e2e_ms"]["max"] == pytest.approx(1000.0)
    assert metrics["output_tokens_per_s"] == pytest.approx(8 / 1.3)
    assert (metrics["requests"], metrics["calls"], metrics["prompt_tokens"], metrics["output_tokens"]) == (3, 2, 13, 8)
    assert metrics["busy_s"] == pytest.approx(1.3)
    for key in ("p50_ci", "p90_ci", "p99_ci"):
        ci = ttft[key]
        assert ci["low"] <= ci["high"] and ci["confidence"] == 0.95
    assert math.isfinite(itl["p99_ci"]["high"])


def test_summary_of_nothing_is_none_and_samples_are_optional() -> None:
    assert summary_ms([]) is None
    assert "samples" not in summary_ms([0.001, 0.002])
    assert generation_metrics([[GenerationOutput([1], [2.0], 1.0, 1)]])["tpot_ms"] is None


def test_output_problems_are_named() -> None:
    assert GenerationOutput([1, 2], [1.0], 0.0, 1).problem() == "2 tokens but 1 timestamps"
    assert GenerationOutput([1], [0.5], 1.0, 1).problem() == "first token time is before the request start"
    assert GenerationOutput([1, 2], [2.0, 1.5], 1.0, 1).problem() == "token timestamps go backwards"
    assert GenerationOutput([], [], 1.0, 1).problem() == "no token generated"
