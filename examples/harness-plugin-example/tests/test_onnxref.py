"""Unit tests of the onnxref backend on hand-built ONNX graphs (no model export needed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from harness.backend import Artifact
from harness.config import typed
from harness.errors import ConfigError, Unsupported
from harness_plugin_example.backend import OnnxRefBackend, OnnxRefOptions, _gather_elements_op


def _save(tmp_path, node, inputs, outputs, name="g"):
    graph = helper.make_graph([node], name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / f"{name}.onnx"
    save(model, path)
    return Artifact(name, tuple(i.name for i in inputs), tuple(o.name for o in outputs), onnx_path=path)


@pytest.fixture
def backend():
    return OnnxRefBackend(typed(OnnxRefOptions, {}, "backend"))


def test_gemm_outputs_are_computed(tmp_path, backend):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    artifact = _save(
        tmp_path,
        node,
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4]), helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
    )
    session = backend.prepare(artifact, "fp32")
    out = session.fetch(session.run(session.load({"a": a, "b": b, "unused": a})))
    np.testing.assert_allclose(out["y"], a @ b, rtol=1e-6)


def test_gather_elements_over_a_long_axis(tmp_path, backend):
    """BERT's position_ids gather: axis of 512 (more than np.choose's 64 choices)."""
    data = np.arange(2 * 512, dtype=np.int64).reshape(2, 512)
    index = np.stack([np.arange(32), np.arange(100, 132)]).astype(np.int64)
    index[1, 0] = -1  # negative indices count from the end
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=1)
    artifact = _save(
        tmp_path,
        node,
        [helper.make_tensor_value_info("x", TensorProto.INT64, [2, 512]), helper.make_tensor_value_info("i", TensorProto.INT64, [2, 32])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2, 32])],
    )
    session = backend.prepare(artifact, "fp32")
    got = session.fetch(session.run(session.load({"x": data, "i": index})))["y"]
    expected = np.take_along_axis(data, np.where(index < 0, index + 512, index), axis=1)
    np.testing.assert_array_equal(got, expected)
    assert got[1, 0] == data[1, 511]


def test_gather_elements_kernel_matches_the_onnx_definition():
    op = _gather_elements_op()
    data = np.array([[1, 2], [3, 4]], dtype=np.float32)
    index = np.array([[0, 0], [1, 0]], dtype=np.int64)
    # The example from the ONNX operator documentation (axis=1): [[1, 1], [4, 3]].
    (got,) = op._run(None, data, index, axis=1)
    np.testing.assert_array_equal(got, [[1, 1], [4, 3]])


def test_other_precisions_are_unsupported(tmp_path, backend):
    with pytest.raises(Unsupported, match="precision 'fp16'"):
        backend.prepare(Artifact("m", ("x",), ("y",), onnx_path=tmp_path / "none.onnx"), "fp16")


def test_torch_artifact_is_unsupported(backend):
    with pytest.raises(Unsupported, match="ONNX"):
        backend.prepare(Artifact("m", ("x",), ("y",), module=object()), "fp32")


def test_missing_input_is_a_one_line_error(tmp_path, backend):
    node = helper.make_node("Relu", ["x"], ["y"])
    artifact = _save(tmp_path, node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    session = backend.prepare(artifact, "fp32")
    with pytest.raises(Unsupported, match="no input x"):
        session.load({"z": np.zeros(2, np.float32)})


def test_probe_reports_a_missing_onnx_reference(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx.reference", None)  # import now raises ImportError
    availability = OnnxRefBackend.probe(OnnxRefOptions())
    assert not availability.available
    assert "onnx.reference" in availability.reason and "pip install" in availability.reason


def test_options_are_validated_with_the_key_named():
    with pytest.raises(ConfigError, match="backend.verbose"):
        typed(OnnxRefOptions, {"verbose": 9}, "backend")
    with pytest.raises(ConfigError, match="backend.nope"):
        typed(OnnxRefOptions, {"nope": 1}, "backend")
