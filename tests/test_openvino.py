"""OpenVINO backend: probe, explicit f32, precision capability checks, NNCF recipes, async pool."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from harness.backend import Artifact
from harness.errors import ConfigError, Unsupported

pytestmark = [
    pytest.mark.openvino,
    pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed (pip install openvino)"),
]


def _backend(**options):
    from backends.openvino import OpenVINOBackend, OpenVINOOptions
    from harness.config import typed

    return OpenVINOBackend(typed(OpenVINOOptions, options, "backend"))


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, tiny_batch, tmp_path_factory):
    from harness.export import export_onnx

    return export_onnx(tiny_model, tiny_batch, str(tmp_path_factory.mktemp("onnx")))


def _artifact(model, onnx, batch):
    return Artifact(
        model.name,
        model.input_names,
        model.output_names,
        onnx_path=onnx.path,
        meta={"batch_size": len(batch["input_ids"]), "seq_len": batch["input_ids"].shape[1], "sample_shape": {k: list(v.shape) for k, v in batch.items()}},
    )


@pytest.fixture(scope="module")
def text_data():
    from harness.data import DatasetOptions, load_dataset

    return load_dataset(DatasetOptions(train_size=64, eval_size=16), seq_len=16)


def test_probe_lists_devices_and_refuses_absent_ones():
    from backends.openvino import OpenVINOBackend, OpenVINOOptions

    found = OpenVINOBackend.probe(OpenVINOOptions())
    assert found.available and "CPU" in found.devices and found.versions["openvino"]
    missing = OpenVINOBackend.probe(OpenVINOOptions(device="NPU.7"))
    if "NPU" not in {d.split(".")[0] for d in found.devices}:
        assert not missing.available and "NPU.7" in missing.reason and "CPU" in missing.reason


def test_options_are_validated_with_the_key():
    with pytest.raises(ConfigError, match="backend.performance_hint"):
        _backend(performance_hint="fast")
    with pytest.raises(ConfigError, match="backend.num_requests"):
        _backend(num_requests=-1)


def test_fp32_sets_f32_explicitly_and_int8_keeps_float_ops_f32():
    from backends.openvino import OpenVINOOptions, compile_config

    assert compile_config(OpenVINOOptions(), "fp32", None)["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config(OpenVINOOptions(), "int8", None)["INFERENCE_PRECISION_HINT"] == "f32"
    assert compile_config(OpenVINOOptions(), "bf16", None)["INFERENCE_PRECISION_HINT"] == "bf16"
    config = compile_config(OpenVINOOptions(performance_hint="throughput", num_requests=3, num_streams=2), "fp32", "/c")
    assert config["PERFORMANCE_HINT"] == "THROUGHPUT" and config["NUM_STREAMS"] == "2"
    assert config["PERFORMANCE_HINT_NUM_REQUESTS"] == 3 and config["CACHE_DIR"] == "/c"


def test_fp32_outputs_match_eager_and_compiled_precision_is_f32(tiny_model, tiny_batch, tiny_onnx):
    from harness.export import eager_outputs

    backend = _backend()
    session = backend.prepare(_artifact(tiny_model, tiny_onnx, tiny_batch), "fp32")
    assert str(session.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    inputs = session.load(tiny_batch)
    for _ in range(2):
        got = session.fetch(session.run(inputs))["logits"]
        assert np.max(np.abs(got - eager_outputs(tiny_model, tiny_batch))) < backend.capabilities().tolerance["fp32"]


def test_device_precision_follows_optimization_capabilities(tiny_model, tiny_batch, tiny_onnx):
    backend = _backend()
    capabilities = list(backend.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    artifact = _artifact(tiny_model, tiny_onnx, tiny_batch)
    for precision, needed in (("bf16", "BF16"), ("fp16", "FP16")):
        if needed in capabilities:
            session = backend.prepare(artifact, precision)
            assert session.fetch(session.run(session.load(tiny_batch)))["logits"].shape == (3, 2)
        else:
            with pytest.raises(Unsupported, match=needed):
                backend.prepare(artifact, precision)


def test_int8_needs_a_compressed_artifact(tiny_model, tiny_batch, tiny_onnx):
    with pytest.raises(Unsupported, match="NNCF"):
        _backend().prepare(_artifact(tiny_model, tiny_onnx, tiny_batch), "int8")


@pytest.mark.parametrize("mode", ["static", "weights"])
def test_nncf_recipes_give_int8_models_close_to_fp32(mode, tiny_model, tiny_batch, tiny_onnx, text_data, tmp_path):
    from harness.compression import pipeline
    from harness.compression.recipes import Recipe
    from harness.export import eager_outputs

    backend = _backend()
    artifact = _artifact(tiny_model, tiny_onnx, tiny_batch)
    out, metrics = pipeline.compress(
        backend, artifact, Recipe(mode=mode, calibration_samples=16), text_data, tiny_onnx.key, str(tmp_path), status=lambda s: None
    )
    assert metrics["recipe"]["name"] == f"int8_{mode}"
    assert out.meta["openvino_ir"].is_file() and out.meta["openvino_ir"].with_suffix(".bin").is_file()
    if mode == "static":
        assert metrics["calibration"]["samples"] == 16
        import openvino as ov

        ops = {op.get_type_name() for op in ov.Core().read_model(str(out.meta["openvino_ir"])).get_ops()}
        assert "FakeQuantize" in ops
    session = backend.prepare(out, "int8")
    got = session.fetch(session.run(session.load(tiny_batch)))["logits"]
    assert np.max(np.abs(got - eager_outputs(tiny_model, tiny_batch))) < 0.05
    again, cached = pipeline.compress(
        backend, artifact, Recipe(mode=mode, calibration_samples=16), text_data, tiny_onnx.key, str(tmp_path), status=lambda s: None
    )
    assert cached["cached"] and again.meta["openvino_ir"] == out.meta["openvino_ir"]


def test_recipes_openvino_cannot_do_are_unsupported(tiny_model, tiny_batch, tiny_onnx, text_data, tmp_path):
    from harness.compression import pipeline
    from harness.compression.recipes import Recipe

    artifact = _artifact(tiny_model, tiny_onnx, tiny_batch)
    with pytest.raises(Unsupported, match="int8_dynamic"):
        pipeline.compress(_backend(), artifact, Recipe(mode="dynamic"), text_data, "k", str(tmp_path), status=lambda s: None)
    with pytest.raises(Unsupported, match="entropy"):
        pipeline.compress(_backend(), artifact, Recipe(mode="static", method="Entropy"), text_data, "k", str(tmp_path), status=lambda s: None)


def test_throughput_mode_keeps_several_requests_in_flight(tiny_model, tiny_batch, tiny_onnx):
    backend = _backend(performance_hint="throughput", num_requests=3)
    session = backend.prepare(_artifact(tiny_model, tiny_onnx, tiny_batch), "fp32")
    assert session.in_flight == 3
    calls, seconds = session.run_many(session.load(tiny_batch), 12, 0.0)
    assert calls >= 12 and seconds > 0
    # the synchronous request still gives the single-stream answer afterwards
    assert session.fetch(session.run(session.load(tiny_batch)))["logits"].shape == (3, 2)


def test_static_shapes_follow_the_run_and_can_be_turned_off(tiny_model, tiny_batch, tiny_onnx):
    artifact = _artifact(tiny_model, tiny_onnx, tiny_batch)
    static = _backend().read(artifact)
    assert all(not port.get_partial_shape().is_dynamic for port in static.inputs)
    dynamic = _backend(static_shapes=False).read(artifact)
    assert any(port.get_partial_shape().is_dynamic for port in dynamic.inputs)
