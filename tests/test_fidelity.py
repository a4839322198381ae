"""Fidelity figures in real records: noise verdicts, CIs, MFU, and the server load pattern."""

import pytest

from conftest import FAST, records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow


def test_record_has_noise_intervals_and_mfu(tmp_path):
    proc = run_cli("+scenario=bert_fp32", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    records.validate(rec)
    m = rec["metrics"]
    noise = m["noise"]
    assert set(noise) >= {"cv", "cv_threshold", "noisy", "outliers", "p50_ci", "p99_ci"}
    assert noise["p50_ci"]["low"] <= m["latency_ms"]["p50"] <= noise["p50_ci"]["high"]
    assert noise["outliers"]["low"] + noise["outliers"]["high"] <= m["latency_ms"]["count"]
    roof = m["roofline"]
    assert roof["flops_per_sample"] > 0 and roof["peak_flops_per_s"] > 0
    assert roof["peak_library"] in roof["peak_candidates"]
    if m["mfu"] is None:  # the run beat even a re-measured peak (a loaded machine): no MFU, and why
        assert "exceeds" in roof["reason"]
    else:
        assert m["mfu"] == pytest.approx(roof["flops_per_sample"] * m["throughput"]["samples_per_s"] / roof["peak_flops_per_s"])
        assert 0 < m["mfu"] <= 1
    assert m["memory_mib"]["peak_rss_mib"] > 0  # every run has a memory figure
    assert {"metrics.server.result", "metrics.pruning.params_after"} <= {c["key"] for c in rec["columns"]}
    assert rec["inputs"] == {}  # no local path in this config


@pytest.mark.parametrize("bound, verdict", [(10_000.0, "VALID"), (0.001, "INVALID")])
def test_server_load_says_valid_or_invalid_and_why(bound, verdict, tmp_path):
    proc = run_cli(
        "+scenario=bert_fp32",
        *FAST,
        "scenario.load=server",
        "scenario.server.queries=40",
        f"scenario.server.latency_bound_ms={bound}",
        "scenario.mfu=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    server = rec["metrics"]["server"]
    assert server["result"] == verdict and server["queries"] == 40
    assert ("exceeds bound" in server["reason"]) == (verdict == "INVALID")
    assert "mfu" not in rec["metrics"]


def test_server_search_reports_the_highest_valid_qps(tmp_path):
    proc = run_cli(
        "+scenario=bert_fp32",
        *FAST,
        "scenario.load=server",
        "scenario.server.queries=30",
        "scenario.server.search=true",
        "scenario.server.latency_bound_ms=10000",
        "scenario.mfu=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    server = rec["metrics"]["server"]
    assert len(server["search"]) == 6 and server["max_valid_qps"] > 0
    assert all(trial["valid"] for trial in server["search"])
