"""The real ``harness`` and ``harness-backends`` entry points, run as a user would."""

import pytest

from conftest import FAST, records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["onnxruntime", "pytorch"])
def test_card_syntax_writes_an_ok_record(backend, tmp_path):
    proc = run_cli("+scenario=bert_fp32", f"backend={backend}", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "record:" in proc.stdout and "p50 ms" in proc.stdout
    (rec,) = records_in(tmp_path / "results")
    records.validate(rec)
    assert rec["status"] == "ok" and rec["backend"]["name"] == backend
    lat = rec["metrics"]["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert rec["metrics"]["throughput"]["samples_per_s"] > 0
    assert rec["metrics"]["validation"]["max_abs_diff"] <= rec["metrics"]["validation"]["tolerance"]
    assert rec["scenario"] == {"name": "bert_fp32", "kind": "inference", "precision": "fp32", "batch_size": 8, "seq_len": 32}


def test_second_run_reuses_the_export_cache(tmp_path):
    for _ in range(2):
        assert run_cli("+scenario=bert_fp32", *FAST, cwd=tmp_path).returncode == 0
    first, second = sorted(records_in(tmp_path / "results"), key=lambda r: r["created"] + r["run_id"])
    cached = {first["metrics"]["export"]["cached"], second["metrics"]["export"]["cached"]}
    assert True in cached


def test_results_dir_override(tmp_path):
    proc = run_cli("+scenario=bert_fp32", *FAST, f"results_dir={tmp_path / 'elsewhere'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(records_in(tmp_path / "elsewhere")) == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["backend=nope"], "unknown backend 'nope'; available: "),
        (["+scenario=nope"], "unknown scenario 'nope'"),
        (["model=nope"], "unknown model 'nope'"),
        (["+scenario=bert_fp32", "scenario.batch_size=abc"], "scenario.batch_size"),
        (["+scenario=bert_fp32", "scenario.batch_size=-1"], "scenario.batch_size"),
        (["+scenario=bert_fp32", "scenario.nope=1"], "scenario.nope"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, needle, tmp_path):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists()


def test_unavailable_device_writes_an_unavailable_record(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_cli("+scenario=bert_fp32", "backend=pytorch", "backend.device=cuda", *FAST, cwd=tmp_path)
    assert proc.returncode == 3
    assert "no CUDA device" in proc.stderr
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "unavailable" and "CUDA" in rec["reason"]


def test_harness_backends_lists_builtins_as_available(tmp_path):
    proc = run_cli(cwd=tmp_path, command="harness-backends")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert "yes" in rows["onnxruntime"] and "yes" in rows["pytorch"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["-m", "backend=a,b"], ["-m", "X=1", "backend=a,b"]),
        (["backend=a", "--cfg", "job"], ["X=1", "backend=a", "--cfg", "job"]),
        (["--cfg", "job"], ["--cfg", "job", "X=1"]),
    ],
)
def test_extra_overrides_stay_in_the_override_group(args, expected):
    from harness.precheck import parse_args, with_overrides

    assert with_overrides(args, parse_args(args), ["X=1"]) == expected
    assert parse_args(expected) is not None
