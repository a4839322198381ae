"""Roofline: formulas by hand, FLOP counting (attention included), honest peaks and their cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import roofline
from harness.hostlock import measurement_lock


def test_gemm_flops_by_hand():
    assert roofline.gemm_flops(2) == 16.0  # 2 * 2^3
    assert roofline.gemm_flops(1024) == 2.0 * 1024**3


def test_mfu_by_hand():
    # 1 GFLOP per sample at 50 samples/s on a 100 GFLOP/s peak -> 0.5
    assert roofline.mfu(1e9, 50.0, 100e9) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        roofline.mfu(1.0, 1.0, 0.0)


def test_trial_rate_divides_all_calls_flops_by_the_whole_span():
    now = [0.0]

    def clock():
        return now[0]

    def call():
        now[0] += 0.1  # every call takes 0.1 s

    # >= 0.25 s and >= 2 calls: 3 calls in 0.3 s of 10 FLOPs each -> 100 FLOP/s
    assert roofline.trial_rate(call, 10.0, min_s=0.25, clock=clock) == pytest.approx(100.0)
    now[0] = 0.0
    assert roofline.trial_rate(call, 10.0, min_s=0.0, min_calls=2, clock=clock) == pytest.approx(100.0)


class _Linear(torch.nn.Module):
    input_names = ("x",)

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.fc(x)


def test_flops_per_sample_of_a_linear_layer():
    # per sample: 8 * 4 multiply-adds = 64 FLOPs
    batch = {"x": np.ones((5, 8), dtype=np.float32)}
    assert roofline.flops_per_sample(_Linear(), batch) == pytest.approx(64.0)


def test_flops_per_sample_counts_the_attention_matmuls(tiny_model):
    # tiny BERT: hidden 32, 2 layers, FFN 64, sequence 16, 2 labels
    h, layers, ffn, seq = 32, 2, 64, 16
    linear = layers * (4 * h * h + 2 * h * ffn) * seq * 2  # Q, K, V, O and the FFN, per token
    attention = layers * 2 * (2 * seq * seq * h)  # Q K^T and P V
    head = 2 * h * h + 2 * h * 2  # pooler and classifier, once per sample
    batch = {"input_ids": np.ones((3, seq), dtype=np.int64), "attention_mask": np.ones((3, seq), dtype=np.int64)}
    assert roofline.flops_per_sample(tiny_model.module, batch) == pytest.approx(linear + attention + head)


def test_flop_counts_are_cached_per_structure_and_shape(tmp_path, monkeypatch):
    batch = {"x": np.ones((5, 8), dtype=np.float32)}
    assert roofline.cached_flops_per_sample(_Linear(), batch, str(tmp_path)) == (pytest.approx(64.0), False)
    counted = []
    monkeypatch.setattr(roofline, "flops_per_sample", lambda module, b: counted.append(b) or 1.0)
    assert roofline.cached_flops_per_sample(_Linear(), batch, str(tmp_path)) == (pytest.approx(64.0), True)
    assert not counted  # same structure and shapes: read, not counted
    other = {"x": np.ones((5, 8, 1), dtype=np.float32)}
    assert roofline.cached_flops_per_sample(_Linear(), other, str(tmp_path)) == (1.0, False)  # new shape: counted
    (entry,) = [p for p in (tmp_path / "flops").rglob("flops.json") if "64" in p.read_text()]
    entry.write_text(entry.read_text().replace("64", "65"))  # damaged: its checksum fails, so it is counted again
    assert roofline.cached_flops_per_sample(_Linear(), batch, str(tmp_path)) == (1.0, False)


def test_every_library_present_competes_and_the_best_sets_the_peak():
    peak = roofline.measure_peak("fp32", "cpu", sizes=(64, 128), trials=2, trial_s=0.01, budget_s=0.0)
    assert set(peak["candidates"]) == set(roofline.libraries("fp32", "cpu")) >= {"torch", "onnxruntime"}
    assert peak["library"] == max(peak["candidates"], key=lambda name: peak["candidates"][name]["flops_per_s"])
    assert peak["flops_per_s"] == peak["candidates"][peak["library"]]["flops_per_s"] > 0
    assert peak["size"] in (64, 128) and str(roofline.PEAK_METHOD) in peak["method"]


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_other_precisions_measure_with_the_libraries_that_compute_them(precision):
    peak = roofline.measure_peak(precision, "cpu", sizes=(64,), trials=1, trial_s=0.01, budget_s=0.0)
    assert peak["flops_per_s"] > 0 and "onnxruntime" not in roofline.libraries("bf16", "cpu")


def _fake(rate):
    calls = []

    def measure(precision, device):
        calls.append(precision)
        return {
            "precision": precision,
            "device": device,
            "flops_per_s": rate,
            "library": "fake",
            "size": 8,
            "candidates": {"fake": {"flops_per_s": rate, "size": 8}},
            "method": "fake",
            "measured": "now",
        }

    return measure, calls


def test_peak_is_measured_once_and_cached(tmp_path):
    measure, calls = _fake(100.0)
    first = roofline.peak_flops("fp32", "cpu", "fp", str(tmp_path), measure=measure)
    second = roofline.peak_flops("fp32", "cpu", "fp", str(tmp_path), measure=measure)
    assert first == second and first["flops_per_s"] == 100.0 and calls == ["fp32"]
    folder = roofline.peak_path("fp32", "cpu", "fp", str(tmp_path)).parent
    assert [p.name for p in folder.iterdir()] == ["peak.json"]  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "edit", "empty", "not-json"])
def test_a_damaged_cached_peak_is_measured_again_never_an_error(tmp_path, damage):
    measure, calls = _fake(100.0)
    roofline.peak_flops("fp32", "cpu", "fp", str(tmp_path), measure=measure)
    path = roofline.peak_path("fp32", "cpu", "fp", str(tmp_path))
    text = path.read_text()
    path.write_text({"truncate": text[: len(text) // 2], "edit": text.replace("100.0", "1e15"), "empty": "", "not-json": "\x00\x01"}[damage])
    assert roofline.peak_flops("fp32", "cpu", "fp", str(tmp_path), measure=measure)["flops_per_s"] == 100.0
    assert calls == ["fp32", "fp32"]
    assert roofline.read_peak(path, "fp32", "cpu")["flops_per_s"] == 100.0  # healed on disk


def test_a_run_above_the_cached_peak_remeasures_and_keeps_the_better(tmp_path):
    low, _ = _fake(100.0)
    roofline.peak_flops("fp32", "cpu", "fp", str(tmp_path), measure=low)
    high, calls = _fake(300.0)
    peak = roofline.peak_flops("fp32", "cpu", "fp", str(tmp_path), measure=high, at_least=250.0)
    assert peak["flops_per_s"] == 300.0 and calls == ["fp32"] and "remeasured_because" in peak
    lower, _ = _fake(50.0)  # a re-measure on a busier machine never lowers the peak
    assert roofline.peak_flops("fp32", "cpu", "fp", str(tmp_path), measure=lower, at_least=400.0)["flops_per_s"] == 300.0


def test_mfu_is_never_above_one(tmp_path, monkeypatch):
    measure, calls = _fake(100.0)
    monkeypatch.setattr(roofline, "measure_peak", measure)
    batch = {"x": np.ones((2, 8), dtype=np.float32)}  # 64 FLOPs per sample
    fine = roofline.roofline_metrics(_Linear(), batch, 1.0, "fp32", "cpu", "fp", str(tmp_path), host_lock_held=True)
    assert fine["mfu"] == pytest.approx(0.64) and fine["roofline"]["peak_library"] == "fake"
    beyond = roofline.roofline_metrics(_Linear(), batch, 10.0, "fp32", "cpu", "fp", str(tmp_path), host_lock_held=True)
    assert beyond["mfu"] is None and "exceeds" in beyond["roofline"]["reason"]
    assert calls == ["fp32", "fp32"]  # the run above the peak triggered one re-measure


def test_without_the_run_holding_it_the_peak_waits_for_the_host_lock(tmp_path, monkeypatch):
    measure, calls = _fake(100.0)
    monkeypatch.setattr(roofline, "measure_peak", measure)
    monkeypatch.setattr(roofline, "LOCK_WAIT_S", 0.2)
    batch = {"x": np.ones((2, 8), dtype=np.float32)}
    with measurement_lock():  # another run is measuring on this host
        busy = roofline.roofline_metrics(_Linear(), batch, 1.0, "fp32", "cpu", "fp", str(tmp_path))
    assert busy["mfu"] is None and "host measurement lock" in busy["roofline"]["reason"] and calls == []
    free = roofline.roofline_metrics(_Linear(), batch, 1.0, "fp32", "cpu", "fp", str(tmp_path))
    assert free["mfu"] == pytest.approx(0.64) and free["roofline"]["peak_host_lock"] == "taken for the peak measurement"
    stored = json.loads(Path(roofline.peak_path("fp32", "cpu", "fp", str(tmp_path))).read_text())
    assert set(stored) == {"payload", "sha256"}


def test_cpu_signature_tells_cpus_with_the_same_name_apart():
    zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: avx2 avx512f\n\nprocessor\t: 1\n"
    zen5 = zen4.replace("cpu family\t: 25", "cpu family\t: 26")
    assert roofline.cpu_signature(zen4)["cpu family"] == "25"
    assert roofline.cpu_signature(zen4) != roofline.cpu_signature(zen5)


def test_an_unwritable_cache_costs_a_re_measure_never_the_run(tmp_path, monkeypatch):
    measure, calls = _fake(100.0)
    monkeypatch.setattr(roofline, "measure_peak", measure)
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache should be")
    batch = {"x": np.ones((2, 8), dtype=np.float32)}
    out = roofline.roofline_metrics(_Linear(), batch, 1.0, "fp32", "cpu", "fp", str(not_a_folder), host_lock_held=True)
    assert out["mfu"] == pytest.approx(0.64) and calls == ["fp32"]
