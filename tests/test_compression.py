"""Compression recipes, calibration, the cached compression stage, ORT and torch.ao recipes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.backend import Artifact, Availability, Backend, Capabilities
from harness.compression import calibration as calib
from harness.compression import onnx_quant, pipeline
from harness.compression.recipes import QuantizationOptions, Recipe, conversion, int8_qdq, recipe_for
from harness.errors import ConfigError, Unsupported


# --- recipes -----------------------------------------------------------------------------------


def test_recipe_names_are_what_backends_list():
    assert Recipe(mode="dynamic").name == "int8_dynamic"
    assert Recipe(mode="static").name == "int8_static"
    assert int8_qdq().name == "int8_qdq"
    assert Recipe(mode="weights").name == "int8_weights"
    assert conversion("fp16").name == "fp16"
    assert Recipe().name == "int8_auto"


def test_recipe_rejects_unknown_values_naming_the_key():
    with pytest.raises(ValueError, match="quantization.mode"):
        Recipe(mode="bogus")
    with pytest.raises(ValueError, match="quantization.method"):
        Recipe(method="KL")
    with pytest.raises(ValueError, match="quantization.mode"):
        Recipe(precision="fp16", mode="static")


def test_qdq_recipe_is_static_symmetric_per_channel():
    recipe = int8_qdq(64)
    assert (recipe.mode, recipe.per_channel, recipe.calibration_samples, recipe.calibrated) == ("qdq", True, 64, True)


def test_cache_key_covers_calibration_only_when_the_recipe_calibrates():
    assert Recipe(mode="dynamic", calibration_samples=8).key() == Recipe(mode="dynamic", calibration_samples=512).key()
    assert Recipe(mode="static", calibration_samples=8).key() != Recipe(mode="static", calibration_samples=512).key()
    assert Recipe(mode="static", method="MinMax").key() != Recipe(mode="static", method="Entropy").key()
    assert Recipe(mode="static", per_channel=True).key() != Recipe(mode="static").key()


def test_recipe_for_precision_and_backend_offer():
    q = QuantizationOptions(mode="static", calibration_samples=32)
    int8 = recipe_for("int8", q, "resnet", frozenset())
    assert (int8.name, int8.model_type, int8.calibration_samples) == ("int8_static", "cnn", 32)
    assert recipe_for("fp16", q, "bert", frozenset({"fp16"})).name == "fp16"
    assert recipe_for("fp16", q, "bert", frozenset()) is None  # set at run time (autocast, OV hint)
    assert recipe_for("fp32", q, "bert", frozenset({"fp16"})) is None


def test_quantization_options_errors_name_the_full_key():
    from harness.config import typed

    with pytest.raises(ConfigError, match="scenario.quantization.mode"):
        typed(QuantizationOptions, {"mode": "bogus"}, "scenario")


# --- calibration ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_data():
    from harness.data import DatasetOptions, load_dataset

    return load_dataset(DatasetOptions(train_size=64, eval_size=16), seq_len=16)


def test_calibration_uses_real_train_rows(text_data):
    batches = calib.sample_batches(text_data, 20, batch_size=8)
    assert [len(b["input_ids"]) for b in batches] == [8, 8, 4]
    train_rows = {row.tobytes() for row in text_data.train.features["input_ids"]}
    eval_rows = {row.tobytes() for row in text_data.eval.features["input_ids"]}
    drawn = [row.tobytes() for b in batches for row in b["input_ids"]]
    assert all(row in train_rows for row in drawn)
    assert not any(row in eval_rows and row not in train_rows for row in drawn)
    assert "labels" not in batches[0]


def test_calibration_fingerprint_is_stable_and_tracks_the_samples(text_data):
    a = calib.fingerprint(calib.sample_batches(text_data, 16))
    assert a == calib.fingerprint(calib.sample_batches(text_data, 16))
    assert a != calib.fingerprint(calib.sample_batches(text_data, 24))
    assert a != calib.fingerprint(calib.sample_batches(text_data, 16, seed=1))


# --- ONNX recipes with ORT tools -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, tiny_batch, tmp_path_factory):
    from harness.export import export_onnx

    return export_onnx(tiny_model, tiny_batch, str(tmp_path_factory.mktemp("onnx")))


def _ort_logits(path: Path, batch: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in batch.items() if k in names})[0]


@pytest.mark.parametrize("name", ["int8_dynamic", "int8_static", "int8_qdq", "fp16"])
def test_onnx_recipes_give_valid_models_close_to_fp32(name, tiny_onnx, text_data, tiny_batch, tmp_path):
    import onnx

    recipe = {
        "int8_dynamic": Recipe(mode="dynamic"),
        "int8_static": Recipe(mode="static", method="MinMax"),
        "int8_qdq": int8_qdq(),
        "fp16": conversion("fp16"),
    }[name]
    out = tmp_path / "model.onnx"
    details = onnx_quant.realise(tiny_onnx.path, out, recipe, calib.sample_batches(text_data, 32))
    assert details["name"] == name
    onnx.checker.check_model(str(out))
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    if name == "int8_dynamic":
        assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    if name in ("int8_static", "int8_qdq"):
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    reference = _ort_logits(tiny_onnx.path, tiny_batch)
    got = _ort_logits(out, tiny_batch)
    assert got.shape == reference.shape
    assert np.max(np.abs(got - reference)) < 0.05
    assert not list(tmp_path.glob(".ort-quant-*")), "staging folder left behind"


def test_qdq_recipe_is_what_tensorrt_accepts(tiny_onnx, text_data, tmp_path):
    from backends.tensorrt import onnx_has_qdq, qdq_problem

    out = tmp_path / "qdq.onnx"
    onnx_quant.quantize_qdq(tiny_onnx.path, out, calib.sample_batches(text_data, 16))
    assert onnx_has_qdq(out)
    assert qdq_problem(out) is None


def test_static_recipe_without_calibration_is_refused(tiny_onnx, tmp_path):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="calibration"):
        onnx_quant.quantize_static(tiny_onnx.path, tmp_path / "m.onnx", [])


# --- the cached compression stage ---------------------------------------------------------------


def _ort_backend():
    from backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions

    return OnnxRuntimeBackend(OnnxRuntimeOptions())


def _onnx_artifact(model, path):
    return Artifact(model.name, model.input_names, model.output_names, onnx_path=path, meta={"batch_size": 3, "seq_len": 16})


def test_compressed_artifact_is_cached_by_recipe_calibration_and_source(tiny_model, tiny_onnx, text_data, tmp_path):
    backend = _ort_backend()
    artifact = _onnx_artifact(tiny_model, tiny_onnx.path)
    recipe = Recipe(mode="static", calibration_samples=16)
    first, m1 = pipeline.compress(backend, artifact, recipe, text_data, tiny_onnx.key, str(tmp_path), status=lambda s: None)
    second, m2 = pipeline.compress(backend, artifact, recipe, text_data, tiny_onnx.key, str(tmp_path), status=lambda s: None)
    assert (m1["cached"], m2["cached"]) == (False, True)
    assert m1["key"] == m2["key"] and first.onnx_path == second.onnx_path and first.onnx_path.is_file()
    assert second.meta["precision"] == "int8" and second.meta["recipe"]["name"] == "int8_static"
    assert second.meta["batch_size"] == 3  # the run's shapes, not the stored ones
    assert m1["calibration"]["samples"] == 16 and m1["size_bytes"] == first.onnx_path.stat().st_size
    more, m3 = pipeline.compress(
        backend, artifact, Recipe(mode="static", calibration_samples=24), text_data, tiny_onnx.key, str(tmp_path), status=lambda s: None
    )
    other_source, m4 = pipeline.compress(backend, artifact, recipe, text_data, "another-export", str(tmp_path), status=lambda s: None)
    assert len({m1["key"], m3["key"], m4["key"]}) == 3
    assert not list((tmp_path / "compressed").glob(".tmp-*")), "temp folders left behind"


def test_auto_resolves_to_the_backends_best_recipe_and_records_it(tiny_model, tiny_onnx, text_data, tmp_path):
    _, metrics = pipeline.compress(
        _ort_backend(), _onnx_artifact(tiny_model, tiny_onnx.path), Recipe(mode="auto"), text_data, tiny_onnx.key, str(tmp_path), status=lambda s: None
    )
    assert metrics["requested"]["name"] == "int8_auto"
    assert metrics["recipe"]["name"] == "int8_dynamic"  # ORT's advice for transformers
    assert metrics["calibration"] is None  # dynamic: no calibration used


def test_recipe_a_backend_does_not_list_is_unsupported(tiny_model, tiny_onnx, text_data, tmp_path):
    with pytest.raises(Unsupported, match="int8_weights"):
        pipeline.compress(
            _ort_backend(), _onnx_artifact(tiny_model, tiny_onnx.path), Recipe(mode="weights"), text_data, tiny_onnx.key, str(tmp_path), status=lambda s: None
        )


@dataclass
class _NoOptions:
    pass


class _PlainBackend(Backend):
    """A backend that declares no recipe: the base contract must refuse compression."""

    name = "plain"
    options_type = _NoOptions

    @classmethod
    def probe(cls, options):
        return Availability(True)

    def capabilities(self):
        return Capabilities(precisions=frozenset({"fp32", "int8"}))

    def prepare(self, artifact, precision):
        raise AssertionError("not reached")


def test_backend_without_recipes_refuses_int8_auto(tiny_model, tiny_onnx, text_data, tmp_path):
    backend = _PlainBackend(_NoOptions())
    with pytest.raises(Unsupported, match="offers: none"):
        pipeline.compress(backend, _onnx_artifact(tiny_model, tiny_onnx.path), Recipe(), text_data, "k", str(tmp_path))
    with pytest.raises(Unsupported):
        backend.compress(_onnx_artifact(tiny_model, tiny_onnx.path), Recipe(), None)


def test_onnxruntime_refuses_int8_on_an_unquantized_artifact(tiny_model, tiny_onnx):
    with pytest.raises(Unsupported, match="int8"):
        _ort_backend().prepare(_onnx_artifact(tiny_model, tiny_onnx.path), "int8")


# --- torch.ao ----------------------------------------------------------------------------------


def _pytorch_backend():
    from backends.pytorch import PyTorchBackend, PyTorchOptions

    return PyTorchBackend(PyTorchOptions())


def test_pytorch_dynamic_int8_quantizes_a_copy(tiny_model, tiny_batch, text_data):
    import torch

    from harness.export import eager_outputs

    backend = _pytorch_backend()
    artifact = Artifact(tiny_model.name, tiny_model.input_names, tiny_model.output_names, module=tiny_model.module)
    out, metrics = pipeline.compress(backend, artifact, Recipe(), text_data, tiny_model.weights_digest(), status=lambda s: None)
    assert metrics["recipe"]["name"] == "int8_dynamic" and metrics["cached"] is False
    quantized = [m for m in out.module.modules() if "quantized" in type(m).__module__]
    assert quantized, "no dynamically quantized Linear layers"
    assert all(type(m) is torch.nn.Linear for m in tiny_model.module.modules() if isinstance(m, torch.nn.Linear))
    session = backend.prepare(out, "int8")
    got = session.fetch(session.run(session.load(tiny_batch)))["logits"]
    assert np.max(np.abs(got - eager_outputs(tiny_model, tiny_batch))) < 0.05
    assert out.meta["size_bytes"] < pipeline.artifact_size(artifact)


def test_pytorch_static_int8_is_unsupported_with_reason(tiny_model, text_data):
    artifact = Artifact(tiny_model.name, tiny_model.input_names, tiny_model.output_names, module=tiny_model.module)
    with pytest.raises(Unsupported, match="int8_static"):
        pipeline.compress(_pytorch_backend(), artifact, Recipe(mode="static"), text_data, "k", status=lambda s: None)


# --- offline load ------------------------------------------------------------------------------


def test_offline_throughput_hand_computed():
    from scenarios.inference import offline_throughput

    assert offline_throughput(calls=10, seconds=2.0, batch_size=8) == 40.0  # 80 samples in 2 s
    with pytest.raises(ValueError):
        offline_throughput(0, 1.0, 8)


def test_default_run_many_runs_calls_back_to_back_until_both_limits():
    from harness.backend import Session

    class Counting(Session):
        calls = 0

        def run(self, inputs):
            self.calls += 1

        def fetch(self, outputs):
            return {}

    session = Counting()
    calls, seconds = session.run_many(None, 7, 0.0)
    assert calls == session.calls == 7 and seconds >= 0 and session.in_flight == 1
    calls, seconds = session.run_many(None, 1, 0.05)
    assert calls >= 1 and seconds >= 0.05
