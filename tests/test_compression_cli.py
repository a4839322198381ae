"""Compressed inference through the real ``harness`` command, on bert_tiny and a small ResNet.

Most runs use random weights (``model.checkpoint=null``) and no accuracy gate, so they
test the plumbing fast; ``test_int8_on_trained_weights`` goes through
``model.checkpoint=auto`` (trains bert_tiny once in the test cache).
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import FAST, records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow

RANDOM = ["model.checkpoint=null", "scenario.accuracy.min_relative=null", "scenario.accuracy.limit=64"]
ACCURACY_KEYS = {"metric", "value", "reference", "relative", "agreement"}
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


def _one_record(proc, folder):
    (record,) = records_in(folder / "results")
    records.validate(record)
    return record


@pytest.mark.parametrize(
    "backend, recipe",
    [
        ("onnxruntime", "int8_dynamic"),
        pytest.param("openvino", "int8_static", marks=[pytest.mark.openvino, needs_openvino]),
        ("pytorch", "int8_dynamic"),
    ],
)
def test_bert_int8_runs_each_backends_best_recipe(backend, recipe, tmp_path):
    proc = run_cli("+scenario=bert_int8", f"backend={backend}", *FAST, *RANDOM, "scenario.quantization.calibration_samples=16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = _one_record(proc, tmp_path)
    assert record["status"] == "ok" and record["scenario"]["precision"] == "int8"
    metrics = record["metrics"]
    assert metrics["compression"]["requested"]["name"] == "int8_auto"
    assert metrics["compression"]["recipe"]["name"] == recipe
    assert ACCURACY_KEYS <= set(metrics["accuracy"]) and metrics["accuracy"]["samples"] == 64
    assert metrics["accuracy"]["metric"] == "accuracy" and "f1" in metrics["accuracy"]
    assert record["model"]["size_bytes"] > 0 and record["model"]["params"] > 0


def test_static_mode_on_onnxruntime_records_calibration(tmp_path):
    proc = run_cli(
        "+scenario=bert_int8",
        "scenario.quantization.mode=static",
        "scenario.quantization.method=Percentile",
        "scenario.quantization.calibration_samples=24",
        *FAST,
        *RANDOM,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compression = _one_record(proc, tmp_path)["metrics"]["compression"]
    assert compression["recipe"]["name"] == "int8_static" and compression["recipe"]["method"] == "Percentile"
    assert compression["calibration"]["split"] == "train" and compression["calibration"]["samples"] == 24


def test_recipe_a_backend_lacks_is_unsupported_not_fp32(tmp_path):
    proc = run_cli("+scenario=bert_int8", "backend=pytorch", "scenario.quantization.mode=static", *FAST, *RANDOM, cwd=tmp_path)
    assert proc.returncode == 4
    record = _one_record(proc, tmp_path)
    assert record["status"] == "unsupported" and "int8_static" in record["reason"]
    assert "latency_ms" not in record["metrics"]


def test_bert_int8_on_tensorrt_without_it_is_unavailable(tmp_path):
    import torch

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present")
    proc = run_cli("+scenario=bert_int8", "backend=tensorrt", *FAST, cwd=tmp_path)
    assert proc.returncode == 3
    record = _one_record(proc, tmp_path)
    assert record["status"] == "unavailable" and "\n" not in record["reason"]
    errors = [line for line in proc.stderr.splitlines() if "unavailable" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr


def test_bert_pruned_is_smaller_than_bert_fp32(tmp_path):
    common = [*FAST, *RANDOM]
    assert run_cli("+scenario=bert_fp32", *FAST, "scenario.accuracy.limit=64", cwd=tmp_path).returncode == 0
    proc = run_cli("+scenario=bert_pruned", *common, "scenario.pruning.finetune_steps=0", "scenario.pruning.importance_samples=32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    full, pruned = sorted(records_in(tmp_path / "results"), key=lambda r: r["scenario"]["name"])
    assert (full["scenario"]["name"], pruned["scenario"]["name"]) == ("bert_fp32", "bert_pruned")
    assert pruned["model"]["params"] < full["model"]["params"]
    assert pruned["model"]["size_bytes"] < full["model"]["size_bytes"]
    assert pruned["metrics"]["pruning"]["params_after"] == pruned["model"]["params"]
    assert ACCURACY_KEYS <= set(pruned["metrics"]["accuracy"])


def test_resnet_int8_on_onnxruntime_scores_top1(tmp_path):
    proc = run_cli(
        "+scenario=resnet_int8",
        *RANDOM,
        "scenario.batch_size=8",
        "scenario.warmup_iters=1",
        "scenario.min_iters=3",
        "scenario.min_duration_s=0",
        "scenario.quantization.calibration_samples=16",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = _one_record(proc, tmp_path)
    assert record["model"]["name"] == "resnet_small" and record["config"]["dataset"]["name"] == "digits"
    assert record["metrics"]["accuracy"]["metric"] == "top1"
    assert record["metrics"]["compression"]["recipe"]["name"] == "int8_static"  # ORT's advice for CNNs
    assert record["metrics"]["compression"]["recipe"]["per_channel"] is True


@needs_openvino
@pytest.mark.openvino
def test_openvino_offline_throughput_keeps_requests_in_flight(tmp_path):
    proc = run_cli(
        "+scenario=bert_fp32",
        "backend=openvino",
        "backend.performance_hint=throughput",
        "scenario.load=offline",
        *FAST,
        "scenario.accuracy.limit=16",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = _one_record(proc, tmp_path)["metrics"]
    assert metrics["throughput"]["load"] == "offline" and metrics["offline"]["in_flight"] >= 1
    assert metrics["offline"]["calls"] >= 5 and metrics["throughput"]["samples_per_s"] > 0
    assert metrics["throughput"]["single_stream_samples_per_s"] > 0


@needs_openvino
@pytest.mark.openvino
def test_bf16_on_openvino_reports_accuracy_or_refuses_without_bf16(tmp_path):
    import openvino as ov

    proc = run_cli("+scenario=bert_bf16", "backend=openvino", *FAST, *RANDOM, cwd=tmp_path)
    record = _one_record(proc, tmp_path)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert proc.returncode == 0 and record["status"] == "ok", record["reason"]
        assert ACCURACY_KEYS <= set(record["metrics"]["accuracy"])
    else:
        assert record["status"] == "unsupported" and "BF16" in record["reason"]


def test_int8_on_trained_weights_keeps_accuracy(tmp_path):
    proc = run_cli("+scenario=bert_int8", "backend=onnxruntime", *FAST, "scenario.accuracy.min_relative=null", cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = _one_record(proc, tmp_path)
    assert record["model"]["source"].startswith("checkpoint:")
    accuracy = record["metrics"]["accuracy"]
    assert accuracy["reference"] > 0.6, "the auto-trained checkpoint did not learn the task"
    assert accuracy["relative"] == pytest.approx(accuracy["value"] / accuracy["reference"])
