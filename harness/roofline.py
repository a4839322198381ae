"""Roofline figures: measured peak FLOP/s per device and precision, FLOPs per sample, MFU.

The peak is *measured* with GEMM microbenchmarks rather than taken from a datasheet, so
MFU compares a model's throughput with what this machine demonstrably reaches. On the
CPU the best of two GEMM libraries counts: torch (``matmul``, ``_int_mm``) and ONNX
Runtime's MLAS (``MatMul``, ``MatMulInteger``), since one library can be far from the
hardware's limit (seen here: torch 219 vs MLAS 477 GFLOP/s fp32 on the same 2 cores). Peaks are cached per host fingerprint, device,
precision and torch version. FLOPs per sample come from ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import numpy as np

from harness import cache

#: GEMM size per device kind: big enough to be compute-bound, small enough to finish fast.
GEMM_SIZE = {"cpu": 1024, "cuda": 8192}
#: Bumped when the way peaks are measured changes, so cached peaks are re-measured.
PEAK_METHOD = 2
DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}


def gemm_flops(n: int) -> float:
    """FLOPs of one n x n x n matrix multiply: n^3 multiply-adds = 2 n^3 operations."""
    return 2.0 * n**3


def mfu(flops_per_sample: float, samples_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (FLOPs per sample x samples/s) over the peak."""
    if peak_flops <= 0:
        raise ValueError("peak FLOP/s must be positive")
    return flops_per_sample * samples_per_s / peak_flops


def _best_rate(run: Any, n: int, min_duration_s: float, sync: Any = lambda: None) -> float:
    """Best FLOP/s of ``run()`` (one n x n x n GEMM) repeated for ``min_duration_s``."""
    run()
    sync()
    best = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < min_duration_s:
        t0 = time.perf_counter()
        run()
        sync()
        best = max(best, gemm_flops(n) / (time.perf_counter() - t0))
    return best


def _ort_gemm_rate(precision: str, n: int, min_duration_s: float) -> float:
    """ONNX Runtime CPU (MLAS) GEMM rate: MatMul for fp32, MatMulInteger (u8 x s8) for int8."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if precision == "int8":
        node, a_type, b_type, out_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
        feeds = {"A": rng.integers(0, 255, (n, n), dtype=np.uint8), "B": rng.integers(-128, 127, (n, n), dtype=np.int8)}
    else:
        node, a_type, b_type, out_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT
        feeds = {"A": rng.random((n, n), dtype=np.float32), "B": rng.random((n, n), dtype=np.float32)}
    graph = helper.make_graph(
        [helper.make_node(node, ["A", "B"], ["C"])],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, [n, n]), helper.make_tensor_value_info("B", b_type, [n, n])],
        [helper.make_tensor_value_info("C", out_type, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return _best_rate(lambda: session.run(None, feeds), n, min_duration_s)


def measure_gemm_peak(precision: str, device: str = "cpu", size: int | None = None, min_duration_s: float = 1.0) -> float:
    """Best FLOP/s of repeated n x n GEMMs at ``precision`` on ``device`` (best library on CPU)."""
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    n = size or GEMM_SIZE[kind]
    generator = torch.Generator().manual_seed(0)
    if precision == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=generator).to(device)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=generator).to(device)
        op = torch._int_mm
    else:
        dtype = getattr(torch, DTYPES[precision])
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        op = torch.matmul
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)
    try:
        best = _best_rate(lambda: op(a, b), n, min_duration_s, sync)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    if kind == "cpu" and precision in ("fp32", "tf32", "int8"):
        best = max(best, _ort_gemm_rate(precision, n, min_duration_s))
    return best


def peak_flops(precision: str, device: str, fingerprint: str, cache_root: str | None = None) -> dict[str, Any]:
    """The cached measured peak for (host, device, precision, torch version), measuring once."""
    import torch

    key = cache.content_key(fingerprint, device, precision, torch.__version__, PEAK_METHOD)
    path = cache.entry("roofline", key, cache_root) / "peak.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = measure_gemm_peak(precision, device)
    method = "best of torch and onnxruntime GEMM" if not device.startswith("cuda") and precision in ("fp32", "tf32", "int8") else "torch GEMM"
    entry = {"precision": precision, "device": device, "flops_per_s": value, "method": method, "torch": torch.__version__}
    path.write_text(json.dumps(entry))
    return entry


def flops_per_sample(module: Any, batch: Mapping[str, np.ndarray]) -> float:
    """FLOPs of one forward pass per sample, counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    names = getattr(module, "input_names", tuple(batch))
    tensors = {n: torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names}
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(**tensors)
    first = next(iter(tensors.values()))
    return counter.get_total_flops() / first.shape[0]


def roofline_metrics(
    module: Any,
    batch: Mapping[str, np.ndarray],
    samples_per_s: float,
    precision: str,
    device: str,
    fingerprint: str,
    cache_root: str | None = None,
) -> dict[str, Any]:
    """The record's ``roofline`` section and MFU: FLOPs/sample of the eager model, the
    measured GEMM peak of (device kind, precision), and their ratio at ``samples_per_s``."""
    kind = "cuda" if device.lower().startswith("cuda") else "cpu" if device.lower().startswith("cpu") else None
    if kind is None or precision not in DTYPES:
        return {"mfu": None, "roofline": {"reason": f"no GEMM peak for device '{device}' at {precision}"}}
    per_sample = flops_per_sample(module, batch)
    peak = peak_flops(precision, device if kind == "cuda" else "cpu", fingerprint, cache_root)
    return {
        "mfu": mfu(per_sample, samples_per_s, peak["flops_per_s"]),
        "roofline": {
            "flops_per_sample": per_sample,
            "achieved_flops_per_s": per_sample * samples_per_s,
            "peak_flops_per_s": peak["flops_per_s"],
            "peak_precision": precision,
            "peak_method": peak["method"],
        },
    }
