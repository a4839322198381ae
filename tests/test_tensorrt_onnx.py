"""ONNX facts the TensorRT backend reads before a build: Q/DQ, float type, input dims, hash.

The tiny ONNX builders here (``matmul_model``, ``qdq_model``) are also used by
``test_tensorrt.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from harness.backends.tensorrt.onnx_inspect import (
    onnx_float_type,
    onnx_has_qdq,
    onnx_input_dims,
    onnx_sha256,
    qdq_problem,
)


# --- tiny ONNX builders ----------------------------------------------------------------


def _save(tmp_path, graph, name="model.onnx", opset=17, **save_kwargs):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, str(path), **save_kwargs)
    return path


def matmul_model(tmp_path, dtype=TensorProto.FLOAT, name="model.onnx", batch="batch", **save_kwargs):
    """y = x @ W + b with x: [batch, 4], W: [4, 3]."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    bias = np.array([0.5, -1.0, 2.0], dtype=np.float32)

    def tensor(tensor_name, array):
        if dtype == TensorProto.BFLOAT16:  # numpy has no bf16: store as float, declare bf16
            return helper.make_tensor(tensor_name, dtype, array.shape, array.flatten().tolist())
        return onnx.numpy_helper.from_array(array.astype(np_dtype), tensor_name)

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm"), helper.make_node("Add", ["xw", "b"], ["y"], name="add")],
        "matmul",
        [helper.make_tensor_value_info("x", dtype, [batch, 4])],
        [helper.make_tensor_value_info("y", dtype, [batch, 3])],
        [tensor("W", weight), tensor("b", bias)],
    )
    return _save(tmp_path, graph, name, **save_kwargs)


def qdq_model(tmp_path, zp_type=TensorProto.INT8, zp_value=0, domain="", name="qdq.onnx"):
    """x -> QuantizeLinear -> DequantizeLinear -> MatMul W -> y."""
    weight = onnx.numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "W")
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05])
    zero = helper.make_tensor("zp", zp_type, [], [zp_value])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"], name="q", domain=domain),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["xdq"], name="dq", domain=domain),
        helper.make_node("MatMul", ["xdq", "W"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weight, scale, zero],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


# --- ONNX facts ------------------------------------------------------------------------


def test_qdq_detection(tmp_path):
    assert onnx_has_qdq(matmul_model(tmp_path)) is False
    assert onnx_has_qdq(qdq_model(tmp_path)) is True


def test_qdq_detection_ignores_contrib_domain_and_sees_subgraphs(tmp_path):
    assert onnx_has_qdq(qdq_model(tmp_path, domain="com.microsoft", name="contrib.onnx")) is False

    then_branch = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["out"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["out2"])],
        "else",
        [],
        [helper.make_tensor_value_info("out2", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "nested",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])],
    )
    assert onnx_has_qdq(_save(tmp_path, graph, "nested.onnx")) is True


def test_qdq_problem_flags_asymmetric_quantization(tmp_path):
    assert qdq_problem(qdq_model(tmp_path)) is None
    assert "uint8 zero point" in qdq_problem(qdq_model(tmp_path, zp_type=TensorProto.UINT8, zp_value=128, name="u8.onnx"))
    assert "nonzero zero point" in qdq_problem(qdq_model(tmp_path, zp_value=3, name="nz.onnx"))


def test_onnx_float_type(tmp_path):
    assert onnx_float_type(matmul_model(tmp_path, TensorProto.FLOAT, "f32.onnx")) == "fp32"
    assert onnx_float_type(matmul_model(tmp_path, TensorProto.FLOAT16, "f16.onnx")) == "fp16"
    assert onnx_float_type(matmul_model(tmp_path, TensorProto.BFLOAT16, "bf16.onnx")) == "bf16"


def test_onnx_input_dims_excludes_initializers(tmp_path):
    path = matmul_model(tmp_path)
    model = onnx.load(str(path))
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]))  # old-style exporters
    onnx.save(model, str(path))
    assert onnx_input_dims(path) == {"x": (None, 4)}
    assert onnx_input_dims(matmul_model(tmp_path, name="static.onnx", batch=2)) == {"x": (2, 4)}


def test_onnx_sha256_covers_external_weights(tmp_path):
    path = matmul_model(tmp_path, name="ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    first = onnx_sha256(path)
    assert first == onnx_sha256(path)
    data = tmp_path / "ext.data"
    blob = bytearray(data.read_bytes())
    blob[0] ^= 0xFF
    data.write_bytes(bytes(blob))
    assert onnx_sha256(path) != first
