"""Roofline formulas by hand, FLOP counting on a known layer, peak caching."""

import numpy as np
import pytest
import torch

from harness import roofline


def test_gemm_flops_by_hand():
    assert roofline.gemm_flops(2) == 16.0  # 2 * 2^3
    assert roofline.gemm_flops(1024) == 2.0 * 1024**3


def test_mfu_by_hand():
    # 1 GFLOP per sample at 50 samples/s on a 100 GFLOP/s peak -> 0.5
    assert roofline.mfu(1e9, 50.0, 100e9) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        roofline.mfu(1.0, 1.0, 0.0)


def test_flops_per_sample_of_a_linear_layer():
    class Net(torch.nn.Module):
        input_names = ("x",)

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4, bias=False)

        def forward(self, x):
            return self.fc(x)

    # per sample: 8 * 4 multiply-adds = 64 FLOPs
    batch = {"x": np.ones((5, 8), dtype=np.float32)}
    assert roofline.flops_per_sample(Net(), batch) == pytest.approx(64.0)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_measured_peak_is_positive_and_cached(precision, tmp_path, monkeypatch):
    calls = []
    real = roofline.measure_gemm_peak

    def counting(p, d, size=None, min_duration_s=1.0):
        calls.append(p)
        return real(p, d, size=128, min_duration_s=0.05)

    monkeypatch.setattr(roofline, "measure_gemm_peak", counting)
    first = roofline.peak_flops(precision, "cpu", "fp-test", str(tmp_path))
    second = roofline.peak_flops(precision, "cpu", "fp-test", str(tmp_path))
    assert first == second and first["flops_per_s"] > 0
    assert calls == [precision]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_gemm_rate_counts_flops(precision):
    rate = roofline._ort_gemm_rate(precision, 64, 0.02)
    assert rate > 0
