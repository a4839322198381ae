"""Roofline figures: measured peak FLOP/s per device and precision, FLOPs per sample, MFU.

The peak is *measured*, not taken from a datasheet, so MFU compares a model's throughput
with what this machine demonstrably reaches. Honest figures need four things:

- **Every GEMM library present competes.** One library can be far from the hardware
  limit where another is not (backends run their own kernels: ONNX Runtime's MLAS,
  OpenVINO's oneDNN, torch's), so the peak of (device, precision) is the best of torch
  (``matmul``/``_int_mm``), ONNX Runtime (``MatMul``/``MatMulInteger``, CPU) and
  OpenVINO (a ``MatMul`` on a constant weight, the FullyConnected path BERT's layers
  take, CPU) where installed, each over several sizes (:data:`SIZES`).
- **Best of many short trials.** Each trial times two back-to-back calls and divides
  their FLOPs by the whole span; the best trial per size counts (at least
  :data:`TRIALS`, more while :data:`BUDGET_S` lasts; :data:`TRIAL_S` says why short).
  The system load at measurement time is recorded beside the peak: on a shared
  machine a peak measured under load can be low, which the re-measure below corrects
  when a run proves it.
- **Quiet machine, cached once.** The measurement runs under the host measurement lock
  (:mod:`harness.hostlock`; taken here unless the run already holds it) and is cached per
  host fingerprint, device, precision, method and library versions, with the winning
  library and every candidate's rate. The cache file is written atomically (unique temp
  name + rename) with a checksum; a truncated or altered file is measured again, never
  an error after a run's measurement.
- **Never above 1.** A run whose achieved FLOP/s beats the cached peak triggers one
  re-measurement (the cache may predate a faster library or a quieter machine); if the
  run still beats it, ``mfu`` is null and ``roofline.reason`` says why.

FLOPs per sample come from ``torch.utils.flop_counter`` with attention forced onto
PyTorch's math path, because the fused CPU attention kernel is not counted (its FLOPs
were silently missing before).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from harness.identity import package_versions
from harness import cache

#: GEMM sizes per device kind: small ones fit the caches, big ones amortise call overhead.
SIZES = {"cpu": (256, 512, 1024, 2048), "cuda": (4096, 8192)}
#: Per (library, size): at least TRIALS trials, more while BUDGET_S lasts (at most MAX_TRIALS);
#: each trial times two back-to-back calls (and at least TRIAL_S). Short trials, many of
#: them: on a shared, time-sliced machine the best short window is the one the scheduler
#: left alone (here, under a load of 8 on 2 cores: 20 ms windows gave 48 GFLOP/s, 2 ms
#: windows 121, two-call windows 205, the quiet figure), while two calls rather than one
#: rule out a lone mistimed call.
TRIALS = 3
TRIAL_S = 0.0
BUDGET_S = 0.3
MAX_TRIALS = 50
#: Bumped when the way peaks are measured changes, so cached peaks are re-measured.
PEAK_METHOD = 3
METHOD = (
    f"best of the GEMM libraries present over sizes; per size the best of >= {TRIALS} trials "
    f"(for {BUDGET_S} s) of two back-to-back calls each (method {PEAK_METHOD})"
)
#: How long a run without the host lock waits for it before giving up on the peak.
LOCK_WAIT_S = 120.0
DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}

GemmFactory = Callable[[str, str, int], Callable[[], Any]]


class PeakUnavailable(Exception):
    """No honest peak could be measured now (host busy, no library for this precision)."""


def gemm_flops(n: int) -> float:
    """FLOPs of one n x n x n matrix multiply: n^3 multiply-adds = 2 n^3 operations."""
    return 2.0 * n**3


def mfu(flops_per_sample: float, samples_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (FLOPs per sample x samples/s) over the peak."""
    if peak_flops <= 0:
        raise ValueError("peak FLOP/s must be positive")
    return flops_per_sample * samples_per_s / peak_flops


def trial_rate(run: Callable[[], Any], flops: float, min_s: float = TRIAL_S, min_calls: int = 2, clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of back-to-back ``run()`` calls over at least ``min_s`` and ``min_calls``."""
    calls = 0
    started = clock()
    elapsed = 0.0
    while calls < min_calls or elapsed < min_s:
        run()
        calls += 1
        elapsed = clock() - started
    return calls * flops / elapsed if elapsed > 0 else 0.0


# --- the GEMM libraries ------------------------------------------------------------------------


def _torch_gemm(precision: str, device: str, n: int) -> Callable[[], Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    if precision == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=generator).to(device)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=generator).to(device)
        op = torch._int_mm
    else:
        dtype = getattr(torch, DTYPES[precision])
        a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
        op = torch.matmul  # type: ignore[assignment]
    if device.startswith("cuda"):

        def run() -> Any:
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            try:
                out = op(a, b)
                torch.cuda.synchronize()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
            return out

        return run
    return lambda: op(a, b)


def _ort_gemm(precision: str, device: str, n: int) -> Callable[[], Any]:
    """ONNX Runtime CPU (MLAS): MatMul for fp32, MatMulInteger (u8 x s8) for int8."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if precision == "int8":
        node, a_type, b_type, out_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
        feeds = {"A": rng.integers(0, 255, (n, n), dtype=np.uint8), "B": rng.integers(-128, 127, (n, n), dtype=np.int8)}
    else:
        node, a_type, b_type, out_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT
        feeds = {"A": rng.random((n, n), dtype=np.float32), "B": rng.random((n, n), dtype=np.float32)}  # type: ignore[dict-item]
    graph = helper.make_graph(
        [helper.make_node(node, ["A", "B"], ["C"])],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, [n, n]), helper.make_tensor_value_info("B", b_type, [n, n])],
        [helper.make_tensor_value_info("C", out_type, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


#: OpenVINO's inference precision hint per precision it measures here (int8 would need a
#: quantized graph: torch's and ORT's integer GEMMs stand for it).
_OV_HINT = {"fp32": "f32", "tf32": "f32", "bf16": "bf16", "fp16": "f16"}


def _openvino_gemm(precision: str, device: str, n: int) -> Callable[[], Any]:
    """OpenVINO CPU (oneDNN): x @ W with W constant, compiled with the precision hint."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], ov.Type.f32, name="x")
    weight = ops.constant(rng.random((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(x, weight, False, False)], [x], "gemm")
    core = ov.Core()
    if precision in ("bf16", "fp16"):
        wanted = {"bf16": "BF16", "fp16": "FP16"}[precision]
        if wanted not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise PeakUnavailable(f"OpenVINO CPU has no {precision} compute here")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": _OV_HINT[precision], "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    data = rng.random((n, n), dtype=np.float32)
    return lambda: request.infer({0: data})


def libraries(precision: str, kind: str) -> dict[str, GemmFactory]:
    """The GEMM libraries importable here that compute ``precision`` on ``kind`` devices."""
    import importlib.util

    found: dict[str, GemmFactory] = {}
    if importlib.util.find_spec("torch"):
        found["torch"] = _torch_gemm
    if kind == "cpu" and precision in ("fp32", "tf32", "int8") and importlib.util.find_spec("onnxruntime"):
        found["onnxruntime"] = _ort_gemm
    if kind == "cpu" and precision in _OV_HINT and importlib.util.find_spec("openvino"):
        found["openvino"] = _openvino_gemm
    return found


def library_versions() -> dict[str, str]:
    return package_versions(("torch", "onnxruntime", "openvino"), missing=None)


def best_trial(run: Callable[[], Any], flops: float, trials: int = TRIALS, trial_s: float = TRIAL_S, budget_s: float = BUDGET_S) -> float:
    """The best :func:`trial_rate` of at least ``trials`` trials, more while ``budget_s`` lasts."""
    rates: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(rates) < trials or (time.perf_counter() < deadline and len(rates) < MAX_TRIALS):
        rates.append(trial_rate(run, flops, trial_s))
    return max(rates)


def measure_peak(
    precision: str, device: str = "cpu", sizes: tuple[int, ...] | None = None, trials: int = TRIALS, trial_s: float = TRIAL_S, budget_s: float = BUDGET_S
) -> dict[str, Any]:
    """Best FLOP/s over every library, size and trial: the winner and every candidate's best."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    candidates: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for name, factory in libraries(precision, kind).items():
        best: dict[str, Any] = {"flops_per_s": 0.0, "size": None}
        for n in sizes or SIZES[kind]:
            try:
                run = factory(precision, device, n)
                run()  # first call: allocation, packing, kernel selection
                rate = best_trial(run, gemm_flops(n), trials, trial_s, budget_s)
            except PeakUnavailable as why:
                problems[name] = str(why)
                break
            except Exception as error:  # a library that cannot run this GEMM competes no further
                problems[name] = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
                break
            if rate > best["flops_per_s"]:
                best = {"flops_per_s": rate, "size": n}
        if best["flops_per_s"] > 0:
            candidates[name] = best
    if not candidates:
        raise PeakUnavailable(f"no GEMM library measured {precision} on {device}" + (f" ({problems})" if problems else ""))
    library = max(candidates, key=lambda name: candidates[name]["flops_per_s"])
    return {
        "precision": precision,
        "device": device,
        "flops_per_s": candidates[library]["flops_per_s"],
        "library": library,
        "size": candidates[library]["size"],
        "candidates": candidates,
        "problems": problems,
        "method": METHOD,
        "versions": library_versions(),
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --- the cache ---------------------------------------------------------------------------------


def _checksum(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_peak(path: Path, precision: str, device: str) -> dict[str, Any] | None:
    """The cached peak at ``path`` if it is whole, unaltered and for this precision and device."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        payload = stored["payload"]
        if stored["sha256"] != _checksum(payload):
            return None
        value = float(payload["flops_per_s"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not math.isfinite(value) or value <= 0 or payload.get("precision") != precision or payload.get("device") != device:
        return None
    return payload


def write_peak(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomically store ``payload`` with its checksum (unique temp name, fsync, rename)."""
    from harness.records import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"payload": payload, "sha256": _checksum(payload)}, indent=1))


def cpu_signature(cpuinfo: str | None = None) -> dict[str, str]:
    """Vendor, family, model, stepping and ISA flags of the first CPU (Linux), for the cache key.

    Virtual machines often report only ``AMD EPYC`` as the model name, so the hardware
    fingerprint cannot tell a Zen 4 (AVX-512 on 256-bit units) from a Zen 5 (full
    512-bit units, twice the fp32 FMA rate) with the same core count; these fields can.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            import platform

            return {"machine": platform.machine(), "processor": platform.processor()}
    wanted = ("vendor_id", "cpu family", "model", "stepping", "flags")
    found: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip() and found:
            break  # the first processor only
        key, _, value = line.partition(":")
        if key.strip() in wanted:
            found.setdefault(key.strip(), value.strip())
    if "flags" in found:
        found["flags"] = hashlib.sha256(" ".join(sorted(found["flags"].split())).encode()).hexdigest()[:16]
    return found


def peak_path(precision: str, device: str, fingerprint: str, cache_root: str | None = None) -> Path:
    key = cache.content_key(fingerprint, cpu_signature(), device, precision, PEAK_METHOD, library_versions())
    return cache.entry("roofline", key, cache_root) / "peak.json"


@contextlib.contextmanager
def _host_lock(held: bool) -> Iterator[str]:
    """The host measurement lock around a peak measurement; yields how it was held."""
    if held:
        yield "held by this run"
        return
    from harness.errors import HarnessError
    from harness.hostlock import measurement_lock

    try:
        with measurement_lock(timeout_s=LOCK_WAIT_S):
            yield "taken for the peak measurement"
    except HarnessError as error:  # busy for too long, or a lock folder that cannot lock
        raise PeakUnavailable(f"host measurement lock unavailable: {error.one_line()}") from None


def peak_flops(
    precision: str,
    device: str,
    fingerprint: str,
    cache_root: str | None = None,
    *,
    host_lock_held: bool = False,
    at_least: float = 0.0,
    measure: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The cached measured peak of (host, device, precision), measured once under the host lock.

    ``at_least``: a rate some run achieved; a cached peak below it is measured again, and
    the better of the two measurements is kept. Raises :class:`PeakUnavailable` when no
    honest peak can be measured now.
    """
    try:
        path = peak_path(precision, device, fingerprint, cache_root)
    except OSError:  # the cache folder cannot be created: measure anyway and keep nothing
        path = Path(os.devnull, "peak.json")  # reading finds nothing; writing fails and is caught
    cached = read_peak(path, precision, device)
    if cached is not None and cached["flops_per_s"] >= at_least:
        return cached
    with _host_lock(host_lock_held) as how:
        again = read_peak(path, precision, device)  # another run may have measured it while we waited
        if again is not None and again["flops_per_s"] >= at_least:
            return again
        fresh = (measure or measure_peak)(precision, device)
        fresh["host_lock"] = how
        if at_least:
            fresh["remeasured_because"] = f"a run achieved {at_least:.4g} FLOP/s above the cached peak"
        best = fresh if cached is None or fresh["flops_per_s"] >= cached["flops_per_s"] else {**cached, "rechecked": fresh["measured"]}
        try:
            write_peak(path, best)
        except OSError as error:  # an unwritable cache costs the next run a re-measure, never this run its record
            best = {**best, "not_cached": f"{type(error).__name__}: {error}"}
        return best


# --- FLOPs and MFU -----------------------------------------------------------------------------


def flops_per_sample(module: Any, batch: Mapping[str, np.ndarray]) -> float:
    """FLOPs of one forward pass per sample, counted by ``torch.utils.flop_counter``.

    Attention runs on PyTorch's math path while counting: the fused CPU kernel of
    ``scaled_dot_product_attention`` is invisible to the counter, which dropped the
    attention matmuls (a quarter of bert_tiny's FLOPs at sequence 128).
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    names = getattr(module, "input_names", tuple(batch))
    tensors = {n: torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names}
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]), counter:
        module(**tensors)
    first = next(iter(tensors.values()))
    return counter.get_total_flops() / first.shape[0]


#: Bumped when the way FLOPs are counted changes, so cached counts are counted again.
FLOPS_METHOD = "torch.utils.flop_counter, sdpa math path, v1"


def cached_flops_per_sample(module: Any, batch: Mapping[str, np.ndarray], cache_root: str | None = None, structure: str | None = None) -> tuple[float, bool]:
    """:func:`flops_per_sample`, counted once per architecture and input shape: ``(flops, cached)``.

    Counting runs one eager forward pass under the counter (most of a second for
    bert_base on two cores) although the answer depends only on the module's structure
    (its ``repr``: layer types and sizes, so a pruned model is another entry) and the
    batch's shapes, never on the weights. The count is kept beside the GEMM peak, with a
    checksum; a damaged entry is counted again.

    With ``structure`` (the module's ``repr``, e.g. from a model card), ``module`` is a
    function that builds the module, called only when the count is not cached.
    """
    shapes = {name: [list(np.shape(value)), str(np.asarray(value).dtype)] for name, value in batch.items()}
    key = cache.content_key(FLOPS_METHOD, repr(module) if structure is None else structure, shapes, package_versions(["torch"])["torch"])
    try:
        path = cache.entry("flops", key, cache_root) / "flops.json"
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["sha256"] == _checksum(stored["payload"]):
            return float(stored["payload"]["flops_per_sample"]), True
    except (OSError, ValueError, TypeError, KeyError):
        pass
    value = flops_per_sample(module if structure is None else module(), batch)
    with contextlib.suppress(OSError):  # an unwritable cache costs the next run a count, never this run its record
        write_peak(cache.entry("flops", key, cache_root) / "flops.json", {"flops_per_sample": value})
    return value, False


def roofline_metrics(
    module: Any,
    batch: Mapping[str, np.ndarray],
    samples_per_s: float,
    precision: str,
    device: str,
    fingerprint: str,
    cache_root: str | None = None,
    host_lock_held: bool = False,
    structure: str | None = None,
) -> dict[str, Any]:
    """The record's ``roofline`` section and MFU: FLOPs/sample of the eager model, the
    measured GEMM peak of (device kind, precision), and their ratio at ``samples_per_s``.
    ``module`` and ``structure`` are as in :func:`cached_flops_per_sample`.

    ``mfu`` is null, with ``roofline.reason``, when there is no honest figure.
    """
    kind = "cuda" if device.lower().startswith("cuda") else "cpu" if device.lower().startswith("cpu") else None
    if kind is None or precision not in DTYPES:
        return {"mfu": None, "roofline": {"reason": f"no GEMM peak for device '{device}' at {precision}"}}
    per_sample, counted_before = cached_flops_per_sample(module, batch, cache_root, structure)
    achieved = per_sample * samples_per_s
    where = device if kind == "cuda" else "cpu"
    try:
        peak = peak_flops(precision, where, fingerprint, cache_root, host_lock_held=host_lock_held)
        if achieved > peak["flops_per_s"]:
            peak = peak_flops(precision, where, fingerprint, cache_root, host_lock_held=host_lock_held, at_least=achieved)
    except PeakUnavailable as why:
        return {"mfu": None, "roofline": {"flops_per_sample": per_sample, "achieved_flops_per_s": achieved, "reason": f"no GEMM peak measured: {why}"}}
    section = {
        "flops_per_sample": per_sample,
        "flops_cached": counted_before,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak["flops_per_s"],
        "peak_precision": precision,
        "peak_library": peak["library"],
        "peak_size": peak.get("size"),
        "peak_candidates": {name: c["flops_per_s"] for name, c in peak.get("candidates", {}).items()},
        "peak_method": peak["method"],
        "peak_measured": peak.get("measured"),
        "peak_host_lock": peak.get("host_lock"),
        "peak_load_average_1m": peak.get("load_average_1m"),
    }
    value = mfu(per_sample, samples_per_s, peak["flops_per_s"])
    if value > 1.0:
        section["reason"] = (
            f"achieved {achieved:.4g} FLOP/s exceeds the re-measured {precision} GEMM peak "
            f"{peak['flops_per_s']:.4g} ({peak['library']}): the peak misses this backend's kernels "
            "or the FLOP count is short, so no MFU is given"
        )
        return {"mfu": None, "roofline": section}
    return {"mfu": value, "roofline": section}
