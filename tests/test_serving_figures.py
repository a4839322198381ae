"""Serving formulas with hand-computed numbers: TTFT, TPOT, ITL, e2e, throughput, goodput, verdict."""

import asyncio

import numpy as np
import pytest

from harness.serving.figures import SLO, step_figures, verdict
from harness.serving.load import Load, arrival_offsets
from harness.serving.session import StreamEnd, TokenChunk
from harness.serving.sweep import search_max_rate, sweep_rates
from harness.serving.timing import RequestRecord


def finished(sent, chunk_times, end, reported=None, tokens_per_chunk=1, index=0):
    record = RequestRecord(index, scheduled=sent, sent=sent)
    for t in chunk_times:
        record.add(TokenChunk(t, tokens=tokens_per_chunk))
    record.finish(StreamEnd(end, prompt_tokens=10, output_tokens=reported))
    return record


def test_request_figures_by_hand():
    r = finished(10.0, [10.1, 10.15, 10.25, 10.3], 10.3)
    assert r.ttft_ms == pytest.approx(100.0)
    assert r.e2e_ms == pytest.approx(300.0)
    assert r.output_tokens == 4
    assert r.tpot_ms == pytest.approx((300.0 - 100.0) / 3)  # 66.667 ms
    assert r.itl_ms == pytest.approx([50.0, 100.0, 50.0])


def test_the_engines_token_count_wins_over_chunks():
    # 2 chunks, but the server says 5 tokens were generated (several per chunk)
    r = finished(0.0, [0.2, 0.6], 1.0, reported=5)
    assert r.output_tokens == 5
    assert r.tpot_ms == pytest.approx((1000.0 - 200.0) / 4)  # 200 ms
    assert r.itl_ms == pytest.approx([400.0])


def test_one_token_has_no_tpot_and_a_failed_request_has_no_e2e_figures():
    assert finished(0.0, [0.1], 0.1).tpot_ms is None
    failed = RequestRecord(0, 0.0, 0.0)
    failed.add(TokenChunk(0.2))
    failed.fail("boom", 0.5)
    assert failed.tpot_ms is None and not failed.ok
    assert failed.ttft_ms == pytest.approx(200.0)


def test_slo_membership():
    slo = SLO(ttft_ms=150, tpot_ms=60)
    assert slo.met_by(finished(0.0, [0.1, 0.15, 0.2], 0.2))  # ttft 100, tpot 50
    assert not slo.met_by(finished(0.0, [0.2, 0.25], 0.25))  # ttft 200 > 150
    assert not slo.met_by(finished(0.0, [0.1, 0.2, 0.3], 0.3))  # tpot 100 > 60
    assert slo.met_by(finished(0.0, [0.15], 0.15))  # ttft == bound; one token: no tpot to miss
    assert SLO(ttft_ms=None, tpot_ms=60).met_by(finished(0.0, [5.0, 5.01], 5.01))
    failed = RequestRecord(0, 0.0, 0.0)
    failed.fail("x", 0.1)
    assert not slo.met_by(failed)


def test_step_figures_by_hand():
    # 4 requests from t=0; the last ends at t=2.0 s. Output tokens 3+3+2+1 (the last failed: not counted).
    records = [
        finished(0.0, [0.1, 0.2, 0.3], 0.3, index=0),  # ttft 100, tpot 100 -> good
        finished(0.5, [0.6, 0.65, 0.7], 0.7, index=1),  # ttft 100, tpot 50  -> good
        finished(1.0, [1.5, 2.0], 2.0, index=2),  # ttft 500 -> misses the TTFT SLO
    ]
    broken = RequestRecord(3, 1.2, 1.2)
    broken.fail("HTTP 500", 1.3)
    records.append(broken)
    figures = step_figures(records, started=0.0, slo=SLO(ttft_ms=200, tpot_ms=150))
    assert figures["duration_s"] == pytest.approx(2.0)
    assert figures["requests"] == {"issued": 4, "finished": 3, "failed": 1, "incomplete": 0, "good": 2}
    assert figures["request_throughput"] == pytest.approx(3 / 2.0)
    assert figures["output_tokens_per_s"] == pytest.approx((3 + 3 + 2) / 2.0)
    assert figures["goodput"] == pytest.approx(2 / 2.0)
    assert figures["good_fraction"] == pytest.approx(2 / 4)
    assert figures["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert figures["itl_ms"]["count"] == 2 + 2 + 1
    assert figures["verdict"] == "INVALID"
    assert "1 of 4 requests did not finish" in figures["reason"]
    assert figures["per_request"]["outcome"] == ["ok", "ok", "ok", "error"]
    assert figures["per_request"]["sent_s"] == [0.0, 0.5, 1.0, 1.2]


def test_p99_verdict_by_hand():
    # TTFTs 100, 200, 300, 400 ms: numpy's p99 = 300 + 0.97 * 100 = 397 ms
    records = [finished(0.0, [t / 1000.0, t / 1000.0 + 0.01], t / 1000.0 + 0.01, index=i) for i, t in enumerate((100, 200, 300, 400))]
    assert verdict(records, SLO(ttft_ms=397.0)) == ("VALID", "p99 TTFT 397.0 ms <= 397 ms")
    result, reason = verdict(records, SLO(ttft_ms=390.0, tpot_ms=5.0))
    assert result == "INVALID"
    assert reason == "p99 TTFT 397.0 ms > 390 ms; p99 TPOT 10.0 ms > 5 ms"
    assert verdict(records, SLO())[0] is None


def test_no_finished_request_is_invalid_and_has_no_throughput():
    broken = RequestRecord(0, 0.0, 0.0)
    broken.fail("refused", 0.1)
    figures = step_figures([broken], 0.0, SLO(ttft_ms=100))
    assert figures["verdict"] == "INVALID" and figures["request_throughput"] == 0.0
    assert figures["ttft_ms"] is None


def test_arrival_offsets():
    assert arrival_offsets(Load("constant", rate=2.0), 4, seed=0) == pytest.approx([0.0, 0.5, 1.0, 1.5])
    a = arrival_offsets(Load("poisson", rate=4.0), 20000, seed=3)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert np.mean(np.diff(a)) == pytest.approx(0.25, rel=0.03)  # mean gap 1/rate
    assert np.array_equal(a, arrival_offsets(Load("poisson", rate=4.0), 20000, seed=3))


def test_load_validation():
    with pytest.raises(ValueError):
        Load("poisson")
    with pytest.raises(ValueError):
        Load("concurrency", concurrency=0)
    assert Load("concurrency", concurrency=3).name == "concurrency@3"


def test_sweep_rates_follow_guidellm():
    # synchronous 1 req/s, saturation 5 req/s, 6 steps: linspace(1, 5, 5)[1:]
    assert sweep_rates(1.0, 5.0, 6) == pytest.approx([2.0, 3.0, 4.0, 5.0])
    assert sweep_rates(1.0, 5.0, 2) == []
    # no gain from concurrency: still distinct rates, up to twice the higher one
    assert sweep_rates(2.0, 2.0, 4) == pytest.approx([3.0, 4.0])  # linspace(2, 4, 3)[1:]
    with pytest.raises(ValueError):
        sweep_rates(0.0, 0.0, 4)


def test_search_bisects_to_the_threshold():
    tried = []

    async def meets(rate):
        tried.append(rate)
        return rate <= 3.3, {}

    result = asyncio.run(search_max_rate(meets, 1.0, 8.0, trials=8))
    assert tried[0] == 1.0
    assert 3.3 - 7.0 / 2**7 <= result.best_rate <= 3.3
    assert len(result.trials) == 8

    async def never(rate):
        return False, {}

    nothing = asyncio.run(search_max_rate(never, 1.0, 8.0, trials=5))
    assert nothing.best_rate is None and "misses the SLOs" in nothing.reason
