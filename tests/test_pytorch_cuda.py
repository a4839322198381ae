"""The pytorch backend on CUDA (``backend=pytorch_cuda`` or ``backend.device=cuda``).

Tests marked ``cuda`` need an NVIDIA GPU and skip elsewhere with the reason; they are
the checks ``scripts/device-check.sh`` complements with real records on a borrowed GPU.
The rest is pure (config, options, capabilities, the device fingerprint from faked
device properties) and runs on any machine.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import FAST, records_in, run_cli

from harness import hardware
from harness.errors import ConfigError
from harness.testing import compose_spec


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not _cuda_available(), reason="no CUDA device (torch.cuda.is_available() is False)")]


# --- pure: any machine ---------------------------------------------------------------


@pytest.mark.parametrize(
    "backend, name, expected",
    [
        ("pytorch_cuda", "pytorch", {"device": "cuda", "cuda_graphs": False, "compile": False}),
        ("onnxruntime_cuda", "onnxruntime", {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}),
        ("torch_xla", "torch_xla", {"device": "auto", "matmul_precision": "highest"}),
    ],
)
def test_accelerator_configs_compose_into_typed_options(backend, name, expected):
    spec = compose_spec(backend)
    assert spec.backend_name == name
    for key, value in expected.items():
        assert getattr(spec.backend_options, key) == value


def test_pytorch_cuda_config_variants_are_overrides():
    spec = compose_spec("pytorch_cuda", ["backend.device=cuda:1", "backend.compile=true", "backend.cuda_graphs=true"])
    assert (spec.backend_options.device, spec.backend_options.compile, spec.backend_options.cuda_graphs) == ("cuda:1", True, True)


@pytest.mark.parametrize(
    "overrides, key",
    [(["backend.device=gpu"], "backend.device"), (["backend.device=cpu", "backend.cuda_graphs=true"], "backend.cuda_graphs")],
)
def test_bad_cuda_options_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_spec("pytorch_cuda", overrides)


def test_cuda_capabilities_offer_tf32_and_training():
    from harness.backends.pytorch import PyTorchBackend

    caps = PyTorchBackend(compose_spec("pytorch_cuda").backend_options).capabilities()
    assert {"fp32", "tf32", "bf16", "fp16"} <= caps.precisions
    assert caps.training and caps.consumes == ("torch",)
    assert all(caps.tolerance[p] > 0 for p in caps.precisions)


H200 = SimpleNamespace(name="NVIDIA H200", total_memory=143771 * 2**20, major=9, minor=0, multi_processor_count=132)
A100 = SimpleNamespace(name="NVIDIA A100-SXM4-80GB", total_memory=81920 * 2**20, major=8, minor=0, multi_processor_count=108)


def test_device_fingerprint_names_the_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: H200)
    monkeypatch.setattr(hardware, "nvidia_driver_version", lambda: "570.86.15")
    info = hardware.cuda_device_info(0)
    assert info == {
        "name": "NVIDIA H200",
        "memory_mib": 143771,
        "compute_capability": "9.0",
        "multiprocessors": 132,
        "driver": "570.86.15",
        "cuda_runtime": str(torch.version.cuda),
    }
    described = hardware.describe(info, label="h200-lab")
    assert described["accelerator"]["name"] == "NVIDIA H200" and described["label"] == "h200-lab"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: A100)
    assert hardware.describe(hardware.cuda_device_info(0))["fingerprint"] != described["fingerprint"]


# --- on a CUDA device ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_backend():
    from harness.backends.pytorch import PyTorchBackend, PyTorchOptions

    options = PyTorchOptions(device="cuda")
    availability = PyTorchBackend.probe(options)
    assert availability.available, availability.reason
    return PyTorchBackend(options)


def _artifact(model):
    """A copy of the module: ``prepare`` moves it to the GPU, the eager reference stays on the CPU."""
    from harness.backend import Artifact

    return Artifact(model.name, model.input_names, model.output_names, module=copy.deepcopy(model.module))


def _backend(**options):
    from harness.backends.pytorch import PyTorchBackend, PyTorchOptions

    return PyTorchBackend(PyTorchOptions(device="cuda", **options))


class TestOnCuda:
    pytestmark = needs_cuda

    def test_probe_lists_the_gpus(self):
        import torch

        from harness.backends.pytorch import PyTorchBackend, PyTorchOptions

        availability = PyTorchBackend.probe(PyTorchOptions(device="cuda"))
        assert availability.available
        assert availability.devices == tuple(f"cuda:{i}" for i in range(torch.cuda.device_count()))

    @pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
    def test_precisions_match_eager_and_time_with_cuda_events(self, cuda_backend, tiny_model, tiny_batch, precision):
        from harness.export import eager_outputs
        from harness.timing import CudaEventTimer

        reference = eager_outputs(tiny_model, tiny_batch)
        session = cuda_backend.prepare(_artifact(tiny_model), precision)
        assert isinstance(session.timer, CudaEventTimer)
        inputs = session.load(tiny_batch)
        result, seconds = session.timer.time(session.run, inputs)
        assert seconds > 0
        got = session.fetch(result)["logits"]
        assert np.max(np.abs(got - reference)) <= cuda_backend.capabilities().tolerance[precision]
        assert session.memory()["peak_allocated_mib"] > 0

    @pytest.mark.parametrize("options", [{"compile": True}, {"cuda_graphs": True}, {"compile": True, "compile_mode": "reduce-overhead"}])
    def test_compile_and_cuda_graphs_keep_outputs(self, tiny_model, tiny_batch, options):
        from harness.export import eager_outputs

        backend = _backend(**options)
        session = backend.prepare(_artifact(tiny_model), "fp32")
        other = {k: v[::-1].copy() for k, v in tiny_batch.items()}
        for batch in (tiny_batch, other, tiny_batch):
            got = session.fetch(session.run(session.load(batch)))["logits"]
            assert np.max(np.abs(got - eager_outputs(tiny_model, batch))) <= 1e-3

    def test_device_info_fingerprints_the_gpu(self, cuda_backend):
        info = cuda_backend.device_info()
        assert info["name"] and info["memory_mib"] > 0 and info["multiprocessors"] > 0
        assert info["cuda_runtime"] not in ("", "None")

    @pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
    def test_amp_training_lowers_the_loss(self, cuda_backend, tiny_model, precision):
        from harness.training.plan import TrainingPlan

        plan = TrainingPlan(
            input_names=tiny_model.input_names,
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.0,
            momentum=0.9,
            nesterov=False,
            grad_clip=1.0,
            grad_accum_steps=1,
            schedule="constant",
            warmup_steps=0,
            total_steps=30,
            precision=precision,
            seed=0,
        )
        session = cuda_backend.prepare_training(copy.deepcopy(tiny_model.module), plan)
        rng = np.random.default_rng(0)
        ids = rng.integers(5, 1000, size=(16, 16)).astype(np.int64)
        batch = session.load({"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": (ids[:, 0] % 2).astype(np.int64)})
        losses = [session.train_step(batch) for _ in range(30)]
        assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])
        assert session.memory()["peak_allocated_mib"] > 0

    def test_cli_records_the_gpu(self, tmp_path):
        from harness import records

        proc = run_cli("+scenario=bert_fp32", "backend=pytorch_cuda", *FAST, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (rec,) = records_in(tmp_path / "results")
        records.validate(rec)
        assert rec["status"] == "ok" and rec["backend"]["device"].startswith("cuda")
        assert rec["hardware"]["accelerator"]["name"] and rec["metrics"]["memory_mib"]["peak_allocated_mib"] > 0
