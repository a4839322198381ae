"""The torch_xla backend.

Two halves. The pure logic (PJRT device choice, the torch/torch_xla version check, the
compile/execute summary from metric snapshots) runs in any venv. Everything marked
``xla`` needs torch_xla, which needs torch 2.9 and so lives in ``.venv-xla``; there it
runs on the CPU PJRT device (``make test`` sets ``PJRT_DEVICE=CPU``). In the main venv
those tests skip with the reason below.
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest

from conftest import FAST, records_in, run_cli

from harness.backends.torch_xla import (
    REASON_NO_LIBTPU,
    REASON_NO_PJRT,
    REASON_NO_TPU_CHIPS,
    REASON_NOT_INSTALLED,
    MetricsSnapshot,
    TorchXLAOptions,
    resolve_pjrt_device,
    summarize_metrics,
    version_mismatch,
)
from harness.errors import ConfigError
from harness.testing import BackendConformance

XLA_MISSING = importlib.util.find_spec("torch_xla") is None
needs_xla = [
    pytest.mark.xla,
    pytest.mark.skipif(XLA_MISSING, reason=f"{REASON_NOT_INSTALLED} (then: PJRT_DEVICE=CPU .venv-xla/bin/python -m pytest -m xla)"),
]
#: Follow PJRT_DEVICE when the caller set one (a TPU VM); otherwise the host CPU.
XLA_DEVICE = "auto" if os.environ.get("PJRT_DEVICE") else "cpu"


# --- pure logic: any venv ------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, env, libtpu, chips, expected",
    [
        ("cpu", None, False, 0, ("CPU", "")),
        ("cpu", "CPU", False, 0, ("CPU", "")),
        ("tpu", None, True, 4, ("TPU", "")),
        ("tpu", "TPU", True, 4, ("TPU", "")),
        ("tpu", None, False, 0, (None, REASON_NO_LIBTPU)),
        ("tpu", None, True, 0, (None, REASON_NO_TPU_CHIPS)),
        ("auto", "CPU", False, 0, ("CPU", "")),
        ("auto", "TPU", True, 8, ("TPU", "")),
        ("auto", None, True, 4, ("TPU", "")),
        ("auto", None, False, 0, (None, REASON_NO_PJRT)),
        ("auto", None, True, 0, (None, REASON_NO_PJRT)),
    ],
)
def test_pjrt_device_choice(requested, env, libtpu, chips, expected):
    assert resolve_pjrt_device(requested, env, libtpu, chips) == expected


@pytest.mark.parametrize("requested, env", [("cpu", "TPU"), ("tpu", "CPU"), ("cpu", "CUDA")])
def test_explicit_device_conflicting_with_pjrt_device_names_both(requested, env):
    device, reason = resolve_pjrt_device(requested, env, True, 4)
    assert device is None
    assert f"PJRT_DEVICE={env}" in reason and f"backend.device={requested}" in reason


def test_unset_pjrt_device_is_not_a_silent_cpu_run():
    """torch_xla alone would pick the CPU here; the backend says what to set instead."""
    device, reason = resolve_pjrt_device("auto", None, False, 0)
    assert device is None and "PJRT_DEVICE=CPU" in reason and "\n" not in reason


@pytest.mark.parametrize(
    "torch_version, xla_version, ok",
    [("2.9.0", "2.9.0", True), ("2.9.1+cu128", "2.9.0", True), ("2.13.0", "2.9.0", False), ("2.10.0+cpu", "2.9.0", False)],
)
def test_version_mismatch(torch_version, xla_version, ok):
    reason = version_mismatch(torch_version, xla_version)
    assert (reason is None) == ok
    if not ok:
        assert f"torch {torch_version}" in reason and "needs torch 2.9.x" in reason and "make .venv-xla" in reason


def test_options_validate_device_and_matmul_precision():
    from harness.config import typed

    assert typed(TorchXLAOptions, {"device": "tpu"}, "backend").device == "tpu"
    with pytest.raises(ConfigError, match="backend.device"):
        typed(TorchXLAOptions, {"device": "gpu"}, "backend")
    with pytest.raises(ConfigError, match="backend.matmul_precision"):
        typed(TorchXLAOptions, {"matmul_precision": "fp32"}, "backend")


def test_metrics_summary_is_the_delta_in_milliseconds():
    """Hand-computed: 2 compiles of 1.5 s and 0.5 s, 6 executions of 1 ms each."""
    start = MetricsSnapshot({"CompileTime": (3, 9e9), "ExecuteTime": (10, 5e6)}, {"UncachedCompile": 3, "CachedCompile": 1, "aten::nonzero": 7})
    first = MetricsSnapshot({"CompileTime": (5, 11e9), "ExecuteTime": (12, 7e6)}, {"UncachedCompile": 5, "CachedCompile": 1, "aten::nonzero": 8})
    end = MetricsSnapshot(
        {"CompileTime": (5, 11e9), "ExecuteTime": (16, 11e6)},
        {"UncachedCompile": 5, "CachedCompile": 5, "aten::nonzero": 10, "aten::_local_scalar_dense": 4, "aten::unused": 0, "xla::add": 99},
    )
    summary = summarize_metrics(start, first, end, runs=4)
    assert summary["runs"] == 4
    assert summary["compile"] == {"count": 2, "total_ms": 2000.0, "mean_ms": 1000.0}
    assert summary["execute"] == {"count": 6, "total_ms": 6.0, "mean_ms": 1.0}
    assert summary["compiles"] == {"uncached": 2, "cached": 4, "after_first_run": 0}
    assert summary["cpu_fallback_ops"] == {"aten::_local_scalar_dense": 4, "aten::nonzero": 3}


def test_metrics_summary_before_any_run():
    empty = MetricsSnapshot({}, {})
    summary = summarize_metrics(empty, None, empty, runs=0)
    assert summary["compile"] == {"count": 0, "total_ms": 0.0, "mean_ms": None}
    assert summary["compiles"]["after_first_run"] is None and summary["cpu_fallback_ops"] == {}


# --- on an XLA device (.venv-xla, PJRT_DEVICE=CPU) ------------------------------------


@pytest.fixture(scope="module")
def xla_backend():
    from harness.backends.torch_xla import TorchXLABackend

    options = TorchXLAOptions(device=XLA_DEVICE)
    availability = TorchXLABackend.probe(options)
    assert availability.available, availability.reason
    return TorchXLABackend(options)


def _artifact(model):
    from harness.backend import Artifact

    return Artifact(model.name, model.input_names, model.output_names, module=model.module)


class TestOnXLA:
    pytestmark = needs_xla

    def test_probe_names_the_pjrt_device_and_versions(self):
        from harness.backends.torch_xla import TorchXLABackend

        availability = TorchXLABackend.probe(TorchXLAOptions(device=XLA_DEVICE))
        assert availability.available, availability.reason
        assert availability.devices and all(":" in d for d in availability.devices)
        assert availability.versions["torch_xla"].startswith("2.9") and availability.versions["torch"].startswith("2.9")

    @pytest.mark.parametrize("precision", ["fp32", "bf16"])
    def test_inference_matches_eager(self, xla_backend, tiny_model, tiny_batch, precision):
        from harness.export import eager_outputs

        reference = eager_outputs(tiny_model, tiny_batch)
        session = xla_backend.prepare(_artifact(tiny_model), precision)
        inputs = session.load(tiny_batch)
        for _ in range(3):
            got = session.fetch(session.run(inputs))["logits"]
            assert np.max(np.abs(got - reference)) <= xla_backend.capabilities().tolerance[precision]
        # The eager reference still runs on the CPU: prepare moved a copy to XLA.
        assert next(tiny_model.module.parameters()).device.type == "cpu"

    def test_run_executes_the_graph_before_returning(self, xla_backend, tiny_model, tiny_batch):
        """After ``run`` the output is device data: ``fetch`` only copies, it executes nothing."""
        from harness.backends.torch_xla import take_snapshot

        def executions() -> int:
            """ExecuteTime's count once it stops moving: torch_xla's metrics thread can book
            an execution a little after ``sync(wait=True)`` has returned (seen here on CPU PJRT)."""
            count = take_snapshot().timers["ExecuteTime"][0]
            for _ in range(50):
                time.sleep(0.1)
                again = take_snapshot().timers["ExecuteTime"][0]
                if again == count:
                    return count
                count = again
            return count

        session = xla_backend.prepare(_artifact(tiny_model), "fp32")
        inputs = session.load(tiny_batch)
        before = executions()
        output = session.run(inputs)
        after_run = executions()
        session.fetch(output)
        assert after_run > before
        assert executions() == after_run

    def test_compile_execute_split_and_no_steady_state_recompiles(self, xla_backend, tiny_model, tiny_batch):
        session = xla_backend.prepare(_artifact(tiny_model), "fp32")
        inputs = session.load(tiny_batch)
        for _ in range(4):
            session.run(inputs)
        xla = session.metrics()["xla"]
        assert xla["runs"] == 4
        assert xla["execute"]["count"] >= 4 and xla["execute"]["total_ms"] > 0
        assert xla["compile"]["count"] == xla["compiles"]["uncached"]
        assert xla["compiles"]["after_first_run"] == 0, "the same shape must hit the compilation cache"
        assert all(name.startswith("aten::") and n > 0 for name, n in xla["cpu_fallback_ops"].items())

    def test_cli_writes_an_ok_record_with_the_xla_metrics(self, tmp_path):
        from harness import records

        proc = run_cli("+scenario=bert_fp32", "backend=torch_xla", f"backend.device={XLA_DEVICE}", *FAST, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (rec,) = records_in(tmp_path / "results")
        records.validate(rec)
        assert rec["status"] == "ok", rec["reason"]
        assert rec["backend"]["name"] == "torch_xla" and rec["backend"]["version"].startswith("2.9")
        assert rec["backend"]["device"].startswith("xla:")
        xla = rec["metrics"]["xla"]
        assert xla["compile"]["count"] >= 1 and xla["execute"]["count"] >= rec["metrics"]["latency_ms"]["count"]


def _plan(model, precision="fp32", **changes):
    from harness.training.plan import TrainingPlan

    fields = dict(
        input_names=model.input_names,
        optimizer="adamw",
        lr=1e-2,
        weight_decay=0.01,
        momentum=0.9,
        nesterov=False,
        grad_clip=1.0,
        grad_accum_steps=1,
        schedule="linear",
        warmup_steps=2,
        total_steps=12,
        precision=precision,
        seed=0,
    )
    fields.update(changes)
    return TrainingPlan(**fields)


def _train_batch(size=8, seq=16):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=(size, seq)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": (ids[:, 0] % 2).astype(np.int64)}


class TestTrainingOnXLA:
    pytestmark = needs_xla

    @pytest.mark.parametrize("precision, accum", [("fp32", 1), ("bf16", 2)])
    def test_steps_lower_the_loss_without_steady_state_recompiles(self, xla_backend, tiny_model, precision, accum):
        import copy

        from harness.backends.torch_xla import take_snapshot

        session = xla_backend.prepare_training(copy.deepcopy(tiny_model.module), _plan(tiny_model, precision, grad_accum_steps=accum))
        batch = session.load(_train_batch())
        losses = [session.train_step(batch) for _ in range(3 * accum)]
        compiled = take_snapshot().counters.get("UncachedCompile", 0)
        losses += [session.train_step(batch) for _ in range(9 * accum)]
        assert take_snapshot().counters.get("UncachedCompile", 0) == compiled, "LR schedule steps must not recompile"
        assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
        assert session.lr == pytest.approx(0.0, abs=1e-12)  # linear decay reaches 0 at total_steps
        logits = session.predict(session.load({k: v for k, v in _train_batch().items() if k != "labels"}))
        assert logits.shape == (8, 2) and np.all(np.isfinite(logits))
        xla = session.metrics()["xla"]
        assert xla["runs"] == 12 * accum and xla["compile"]["count"] >= 1 and xla["execute"]["count"] >= xla["runs"]
        session.close()
        assert all(p.device.type == "cpu" for p in session.module.parameters()), "close brings the trained module home"

    def test_training_refuses_fp16_and_multi_process(self, xla_backend, tiny_model):
        from harness.errors import Unsupported
        from harness.training.plan import World

        with pytest.raises(Unsupported, match="fp16"):
            xla_backend.prepare_training(tiny_model.module, _plan(tiny_model, "fp16"))
        with pytest.raises(Unsupported, match="world size 2"):
            xla_backend.prepare_training(tiny_model.module, _plan(tiny_model, world=World(size=2, rank=0, local_rank=0)))

    def test_bert_train_scenario_writes_an_ok_record(self, tmp_path):
        from harness import records

        proc = run_cli(
            "+scenario=bert_train",
            "backend=torch_xla",
            f"backend.device={XLA_DEVICE}",
            "model=bert_tiny",
            "scenario.max_steps=12",
            "scenario.batch_size=8",
            "scenario.eval_interval=0",
            "scenario.warmup_steps_excluded=2",
            "dataset.train_size=128",
            "dataset.eval_size=64",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (rec,) = records_in(tmp_path / "results")
        records.validate(rec)
        assert rec["status"] == "ok", rec["reason"]
        training = rec["metrics"]["training"]
        assert training["steps"] == 12 and training["samples_per_s"] > 0 and training["final_accuracy"] is not None
        assert rec["backend"]["device"].startswith("xla:")


class TestTorchXLAConformance(BackendConformance):
    """The conformance kit on the CPU PJRT device (or the device PJRT_DEVICE names)."""

    pytestmark = needs_xla
    backend = "torch_xla"
    overrides = (f"backend.device={XLA_DEVICE}",)
