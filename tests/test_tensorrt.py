"""Tests of the TensorRT backend object: probe, registration, session dtypes, a real engine.

The focused modules beside this one test the package's parts: ``test_tensorrt_plan``
(options, profiles, precision plans, versions), ``test_tensorrt_onnx`` (ONNX facts) and
``test_tensorrt_build`` (cache keys, parser errors, the build driven without a GPU).

Everything here except the last two tests runs on any machine (TensorRT is not
installed here and there is no GPU). ``test_build_and_run_real_engine`` is marked
``tensorrt`` and builds and runs a real engine; it skips with the precise reason when
the library or a CUDA device is missing.
"""

from __future__ import annotations

import importlib.util
import re
from types import SimpleNamespace

import numpy as np
import pytest

from harness.backend import Artifact
from harness.hardware import parse_driver_version
from harness.timing import CudaEventTimer
from harness.errors import Unavailable, Unsupported
from harness.registry import Registry
from harness.backends import tensorrt as trt_backend
from harness.backends.tensorrt import REASON_NOT_INSTALLED, REASON_NO_CUDA, TensorRTBackend, TensorRTOptions
from harness.backends.tensorrt.onnx_inspect import onnx_has_qdq, qdq_problem
from harness.backends.tensorrt.plan import parse_version
from harness.backends.tensorrt.session import TRT_TO_TORCH_DTYPE, torch_dtype_name
from test_tensorrt_onnx import matmul_model

TENSORRT_MISSING = importlib.util.find_spec("tensorrt") is None


# --- probe -------------------------------------------------------------------------------


@pytest.mark.skipif(not TENSORRT_MISSING, reason="tensorrt is installed on this machine")
def test_probe_here_says_not_installed():
    availability = TensorRTBackend.probe(TensorRTOptions())
    assert availability.available is False
    assert availability.reason == REASON_NOT_INSTALLED


def test_probe_without_tensorrt(monkeypatch):
    monkeypatch.setattr(trt_backend, "installed_tensorrt_version", lambda: None)
    assert TensorRTBackend.probe(None).reason == REASON_NOT_INSTALLED


def test_probe_without_cuda(monkeypatch):
    monkeypatch.setattr(trt_backend, "installed_tensorrt_version", lambda: "10.13.0.35")
    monkeypatch.setattr(trt_backend, "cuda_device_count", lambda: 0)
    availability = TensorRTBackend.probe(TensorRTOptions())
    assert (availability.available, availability.reason) == (False, REASON_NO_CUDA)
    assert availability.versions["tensorrt"] == "10.13.0.35"


def test_probe_with_an_old_tensorrt(monkeypatch):
    monkeypatch.setattr(trt_backend, "installed_tensorrt_version", lambda: "8.6.1.6")
    monkeypatch.setattr(trt_backend, "cuda_device_count", lambda: 1)
    assert TensorRTBackend.probe(TensorRTOptions()).reason == "tensorrt 8.6 unsupported (need 10.x or 11.x)"


def test_probe_available(monkeypatch):
    monkeypatch.setattr(trt_backend, "installed_tensorrt_version", lambda: "11.0.0")
    monkeypatch.setattr(trt_backend, "cuda_device_count", lambda: 2)
    availability = TensorRTBackend.probe(TensorRTOptions(device_index=1))
    assert availability.available is True and availability.reason == ""
    assert availability.devices == ("cuda:0", "cuda:1")
    assert availability.versions["tensorrt"] == "11.0.0" and "torch" in availability.versions


def test_probe_never_raises(monkeypatch):
    def broken():
        raise ImportError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(trt_backend, "installed_tensorrt_version", broken)
    availability = TensorRTBackend.probe(None)
    assert availability.available is False
    assert availability.reason.startswith("tensorrt failed to import (ImportError: libnvinfer.so.10")

    def no_driver():
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(trt_backend, "installed_tensorrt_version", lambda: "10.13.0")
    monkeypatch.setattr(trt_backend, "cuda_device_count", no_driver)
    assert TensorRTBackend.probe(None).reason.startswith("CUDA check failed (RuntimeError")


def test_installed_version_distinguishes_missing_from_broken(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorrt":
            raise ModuleNotFoundError("No module named 'tensorrt_libs'", name="tensorrt_libs")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ModuleNotFoundError):
        trt_backend.installed_tensorrt_version()


# --- session dtypes, driver --------------------------------------------------------------


def test_torch_dtype_names_exist_in_torch():
    import torch

    for trt_name, torch_name in TRT_TO_TORCH_DTYPE.items():
        assert isinstance(getattr(torch, torch_name), torch.dtype), trt_name
    assert torch_dtype_name(SimpleNamespace(name="HALF")) == "float16"
    assert torch_dtype_name("DataType.INT64") == "int64"
    with pytest.raises(Unsupported, match="INT4"):
        torch_dtype_name("INT4")


def test_parse_driver_version():
    text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version: gcc 12"
    assert parse_driver_version(text) == "550.54.15"
    open_text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build"
    assert parse_driver_version(open_text) == "570.86.15"
    assert parse_driver_version("nothing here") is None


# --- timer -----------------------------------------------------------------------------


class _FakeEvent:
    def __init__(self, log, label):
        self.log, self.label = log, label

    def record(self, stream=None):
        self.log.append(f"record {self.label}")

    def synchronize(self):
        self.log.append(f"sync {self.label}")

    def elapsed_time(self, other):
        return 2.5  # ms, as torch.cuda.Event reports


def _fake_timer():
    log: list[str] = []
    timer = CudaEventTimer(stream="s")
    timer._events = (_FakeEvent(log, "start"), _FakeEvent(log, "end"))
    return timer, log


def test_cuda_event_timer_records_around_the_call():
    timer, log = _fake_timer()
    result, seconds = timer.time(lambda x: log.append("fn") or x * 2, 21)
    assert (result, seconds) == (42, 0.0025)
    assert log == ["record start", "fn", "record end", "sync end"]


def test_cuda_event_timer_ends_where_the_session_marks_done():
    timer, log = _fake_timer()

    def run():
        log.append("enqueue")
        timer.mark_done()
        log.append("stream sync")
        return "out"

    assert timer.time(run) == ("out", 0.0025)
    assert log == ["record start", "enqueue", "record end", "stream sync", "sync end"]
    log.clear()
    timer.mark_done()  # outside time(): no-op
    assert log == []


# --- backend object and registration ---------------------------------------------------


def test_capabilities():
    caps = TensorRTBackend(TensorRTOptions()).capabilities()
    assert caps.precisions == {"fp32", "fp16", "bf16", "int8"}
    assert caps.consumes == ("onnx",) and caps.training is False and caps.recipes == {"int8_qdq"}
    assert set(caps.tolerance) == set(caps.precisions)
    assert caps.tolerance["fp32"] == 1e-3
    assert TensorRTBackend(TensorRTOptions(tf32=True)).capabilities().tolerance["fp32"] == 1e-2


def test_backend_identity():
    backend = TensorRTBackend(TensorRTOptions(device_index=1))
    assert backend.name == "tensorrt" and TensorRTBackend.options_type is TensorRTOptions
    assert backend.device() == "cuda:1"
    if TENSORRT_MISSING:
        assert backend.version() == "not installed"


def test_prepare_refuses_before_touching_the_gpu(tmp_path):
    backend = TensorRTBackend(TensorRTOptions())
    artifact = Artifact("m", ("x",), ("y",), onnx_path=matmul_model(tmp_path), meta={"batch_size": 2})
    with pytest.raises(Unsupported, match="precision 'fp8'"):
        backend.prepare(artifact, "fp8")
    if TENSORRT_MISSING:
        with pytest.raises(Unavailable, match="tensorrt not installed"):
            backend.prepare(artifact, "fp32")


def test_hookimpl_registers_the_backend():
    registry = Registry()
    trt_backend.harness_register_backends(registry)
    assert registry.backend("tensorrt") is TensorRTBackend


def test_plugin_manager_loads_the_module():
    from harness.plugins import load_plugins

    plugins = load_plugins(extra=[("tensorrt-under-test", trt_backend)])
    assert plugins.registry.backend("tensorrt") is TensorRTBackend
    assert not [p for p in plugins.problems if "tensorrt" in p.name]


# --- integration: a real engine ----------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_build_and_run_real_engine(tmp_path, monkeypatch):
    trt = pytest.importorskip("tensorrt", reason="tensorrt not installed (pip install tensorrt from NVIDIA's index)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible (torch.cuda.is_available() is False)")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))

    path = matmul_model(tmp_path)
    artifact = Artifact("matmul", ("x",), ("y",), onnx_path=path, meta={"batch_size": 2, "sample_shape": [4]})
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10) + np.array([0.5, -1.0, 2.0], np.float32)

    backend = TensorRTBackend(TensorRTOptions(max_batch=4, builder_optimization_level=0))
    assert backend.probe(backend.options).available
    session = backend.prepare(artifact, "fp32")
    inputs = session.load({"x": x})
    outputs, seconds = session.timer.time(session.run, inputs)
    assert seconds > 0
    np.testing.assert_allclose(session.fetch(outputs)["y"], expected, atol=1e-3)
    assert session.memory()["peak_allocated_mib"] >= 0
    session.close()

    engines = list((tmp_path / "cache" / "tensorrt").glob("*/engine.plan"))
    assert len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    again = backend.prepare(artifact, "fp32")  # served from the engine cache
    assert engines[0].stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again.fetch(again.run(again.load({"x": x})))["y"], expected, atol=1e-3)

    if parse_version(trt.__version__)[0] == 10:
        half = backend.prepare(artifact, "fp16")  # weakly typed BuilderFlag.FP16 path
        np.testing.assert_allclose(half.fetch(half.run(half.load({"x": x})))["y"], expected, atol=2e-2)
    else:
        with pytest.raises(Unsupported, match="converted to fp16"):
            backend.prepare(artifact, "fp16")

    info = backend.device_info()
    assert info["name"] and info["memory_mib"] > 0 and re.fullmatch(r"\d+\.\d+", info["compute_capability"])


@pytest.mark.slow
def test_compress_writes_a_symmetric_qdq_onnx_tensorrt_can_parse(tiny_model, tiny_batch, tmp_path):
    """INT8 for TensorRT is explicit Q/DQ: compress needs no TensorRT, and its output
    passes the same check prepare applies before building an engine."""
    from harness.compression import recipes
    from harness.compression.calibration import Calibration
    from harness.export import export_onnx

    exported = export_onnx(tiny_model, tiny_batch, str(tmp_path / "cache"))
    artifact = Artifact(tiny_model.name, tiny_model.input_names, tiny_model.output_names, onnx_path=exported.path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    calibration = Calibration(batches=[tiny_batch], samples=3, fingerprint="t", workdir=workdir)
    backend = TensorRTBackend(TensorRTOptions())
    out = backend.compress(artifact, recipes.int8_qdq(3), calibration)
    assert out.onnx_path.is_file() and out.meta["precision"] == "int8"
    assert onnx_has_qdq(out.onnx_path)
    assert qdq_problem(out.onnx_path) is None
