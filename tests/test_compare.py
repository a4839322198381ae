"""harness-compare: the CI regression gate on synthetic records with known changes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import compare, records
from test_results import make_record


def _latency_record(samples: np.ndarray, *, backend: str = "onnxruntime", batch_size: int = 8, results_dir: str = "/ci/a/results", **extra: object) -> dict:
    """A single-stream record whose latency figures and throughput all come from ``samples``."""
    values = [float(v) for v in samples]
    rec = make_record(
        backend=backend,
        batch_size=batch_size,
        samples=values,
        p50=float(np.percentile(values, 50)),
        p99=float(np.percentile(values, 99)),
        throughput=batch_size * 1000.0 / float(np.mean(values)),
        **extra,
    )
    rec["config"] = {
        "results_dir": results_dir,
        "launcher": {"timeout_s": 600},
        "backend": {"name": backend, "intra_op_threads": 0},
        "model": {"name": "tiny-bert", "path": None},
        "scenario": {"name": "bert_fp32", "batch_size": batch_size},
    }
    return rec


def _scaled(rec: dict, factor: float) -> dict:
    """The same run, ``factor`` times slower: every latency figure up, throughput down."""
    out = copy.deepcopy(rec)
    out["run_id"] = records.new_run_id()
    latency = out["metrics"]["latency_ms"]
    latency["samples"] = [v * factor for v in latency["samples"]]
    for key in ("p50", "p90", "p95", "p99", "mean", "std", "min", "max"):
        latency[key] *= factor
    out["metrics"]["throughput"]["samples_per_s"] /= factor
    out["config"]["results_dir"] = "/ci/b/results"  # run-local: never separates a match
    return out


@pytest.fixture()
def baseline(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "baseline"
    for backend in ("onnxruntime", "openvino"):
        records.write(_latency_record(rng.normal(10.0, 0.5, 300).clip(1), backend=backend), folder)
    return folder


def _candidate(tmp_path: Path, baseline: Path, factor: float, noise: float = 0.0) -> Path:
    rng = np.random.default_rng(1)
    folder = tmp_path / f"candidate-{factor}-{noise}"
    for path in sorted(baseline.glob("*.json")):
        rec = _scaled(records.read(path), factor)
        if noise:
            latency = rec["metrics"]["latency_ms"]
            latency["samples"] = [v * (1 + rng.normal(0, noise)) for v in latency["samples"]]
        records.write(rec, folder)
    return folder


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.compare", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("metric", ["throughput", "p50", "p99"])
def test_latency_samples_times_one_and_a_half_fail_the_gate(tmp_path: Path, baseline: Path, metric: str) -> None:
    slower = _candidate(tmp_path, baseline, 1.5)
    done = run(str(baseline), str(slower), "--metric", metric, "--format", "json")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert out["worse"] and [row["verdict"] for row in out["rows"]] == ["worse", "worse"]
    row = out["rows"][0]
    assert row["significant"] and row["evidence"].startswith("bootstrap of raw samples")
    expected = 1 / 1.5 - 1 if metric == "throughput" else 0.5
    assert row["change"] == pytest.approx(expected, rel=1e-6)


def test_the_same_records_pass(tmp_path: Path, baseline: Path) -> None:
    same = _candidate(tmp_path, baseline, 1.0)
    done = run(str(baseline), str(same))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 matched configuration(s): 2 unchanged" in done.stdout


def test_noise_within_the_interval_passes(tmp_path: Path, baseline: Path) -> None:
    noisy = _candidate(tmp_path, baseline, 1.01, noise=0.02)  # 1% slower, 2% noise: inside the 5% threshold
    for metric in ("throughput", "p50"):
        done = run(str(baseline), str(noisy), "--metric", metric, "--format", "json")
        assert done.returncode == 0, done.stdout
        assert {row["verdict"] for row in json.loads(done.stdout)["rows"]} == {"unchanged"}


def test_faster_is_better_and_never_fails(tmp_path: Path, baseline: Path) -> None:
    faster = _candidate(tmp_path, baseline, 0.6)
    done = run(str(baseline), str(faster), "--format", "markdown")
    assert done.returncode == 0
    assert done.stdout.startswith("### harness-compare: throughput, threshold 5.0%")
    assert done.stdout.count("| better |") == 2


def test_rows_only_in_one_side_are_listed_and_do_not_fail(tmp_path: Path, baseline: Path) -> None:
    other = tmp_path / "other"
    records.write(_latency_record(np.full(50, 10.0), batch_size=1), other)
    done = run(str(baseline), str(other), "--format", "json")
    assert done.returncode == 0
    verdicts = sorted(row["verdict"] for row in json.loads(done.stdout)["rows"])
    assert verdicts == ["only in baseline", "only in baseline", "only in candidate"]


def test_a_config_key_only_the_candidate_knows_does_not_break_matching(tmp_path: Path, baseline: Path) -> None:
    newer = tmp_path / "newer"
    for path in baseline.glob("*.json"):
        rec = _scaled(records.read(path), 1.0)
        rec["config"]["backend"]["new_option"] = "default"  # added by the candidate's harness version
        records.write(rec, newer)
    rows = compare.compare(compare.load(str(baseline)), compare.load(str(newer)), compare.METRICS["p50"], 0.05)
    assert [row.verdict for row in rows] == ["unchanged", "unchanged"]


def test_without_samples_the_record_intervals_or_the_threshold_decide() -> None:
    metric = compare.METRICS["p50"]
    assert compare.verdict(0.5, 1.4, 1.6, metric, 0.05) == ("worse", True)
    assert compare.verdict(0.5, 0.9, 2.0, metric, 0.05) == ("unchanged", False)  # interval spans no change
    assert compare.verdict(0.03, 1.02, 1.04, metric, 0.05) == ("unchanged", True)  # real, but under the threshold
    assert compare.verdict(-0.2, None, None, compare.METRICS["throughput"], 0.05) == ("worse", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing", "missing"], "path not found"),
        (["{base}", "{base}", "--threshold", "abc"], "--threshold 'abc' is not a number"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(baseline: Path, args: list[str], message: str) -> None:
    done = run(*(arg.format(base=baseline) for arg in args))
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1


def test_thresholds_parse_as_percent_or_fraction() -> None:
    assert compare.parse_threshold("5%") == compare.parse_threshold("5") == compare.parse_threshold("0.05") == 0.05
