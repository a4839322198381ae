"""Tests of the TensorRT backend.

Everything except the last test is pure logic and runs on any machine (TensorRT is
not installed here and there is no GPU). ``test_build_and_run_real_engine`` is marked
``tensorrt`` and builds and runs a real engine; it skips with the precise reason when
the library or a CUDA device is missing.
"""

from __future__ import annotations

import importlib.util
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from harness.backend import Artifact
from harness.hardware import parse_driver_version
from harness.timing import CudaEventTimer
from harness.errors import ConfigError, Unavailable, Unsupported
from harness.registry import Registry
from harness.backends import tensorrt as trt_backend
from harness.backends.tensorrt import (
    REASON_NO_CUDA,
    REASON_NOT_INSTALLED,
    TensorRTBackend,
    TensorRTOptions,
    check_version,
    engine_cache_key,
    format_parser_errors,
    network_flags,
    onnx_float_type,
    onnx_has_qdq,
    onnx_input_dims,
    onnx_sha256,
    parse_version,
    pin_static_dims,
    precision_plan,
    probe_reason,
    profile_for_onnx,
    qdq_problem,
    shape_profile,
    timing_cache_key,
    torch_dtype_name,
)

TENSORRT_MISSING = importlib.util.find_spec("tensorrt") is None


# --- tiny ONNX builders ----------------------------------------------------------------


def _save(tmp_path, graph, name="model.onnx", opset=17, **save_kwargs):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    path = tmp_path / name
    onnx.save(model, str(path), **save_kwargs)
    return path


def _matmul_model(tmp_path, dtype=TensorProto.FLOAT, name="model.onnx", batch="batch", **save_kwargs):
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


def _qdq_model(tmp_path, zp_type=TensorProto.INT8, zp_value=0, domain="", name="qdq.onnx"):
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


# --- options ---------------------------------------------------------------------------


def test_options_defaults():
    opts = TensorRTOptions()
    assert (opts.device_index, opts.workspace_gb, opts.builder_optimization_level) == (0, 4.0, 3)
    assert (opts.min_batch, opts.max_batch, opts.min_seq, opts.max_seq) == (1, None, 1, None)
    assert opts.timing_cache is True and opts.tf32 is False


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"device_index": -1}, "device_index"),
        ({"workspace_gb": 0}, "workspace_gb"),
        ({"workspace_gb": "4"}, "workspace_gb"),
        ({"builder_optimization_level": 6}, "builder_optimization_level"),
        ({"builder_optimization_level": -1}, "builder_optimization_level"),
        ({"min_batch": 0}, "min_batch"),
        ({"min_batch": 4, "max_batch": 2}, "max_batch"),
        ({"max_batch": 2.5}, "max_batch"),
        ({"min_seq": 0}, "min_seq"),
        ({"min_seq": 64, "max_seq": 32}, "max_seq"),
        ({"timing_cache": "yes"}, "timing_cache"),
        ({"device_index": True}, "device_index"),
    ],
)
def test_options_validation_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        TensorRTOptions(**kwargs)


# --- shape profiles --------------------------------------------------------------------


def test_text_profile_defaults_to_the_measured_shape():
    profile = shape_profile(["input_ids", "attention_mask"], 8, 128, TensorRTOptions())
    assert profile == {
        "input_ids": ((1, 1), (8, 128), (8, 128)),
        "attention_mask": ((1, 1), (8, 128), (8, 128)),
    }


def test_text_profile_with_headroom():
    opts = TensorRTOptions(min_batch=2, max_batch=32, min_seq=16, max_seq=512)
    assert shape_profile(["input_ids"], 8, 128, opts) == {"input_ids": ((2, 16), (8, 128), (32, 512))}


def test_image_profile_varies_only_the_batch():
    opts = TensorRTOptions(max_batch=16)
    profile = shape_profile(["pixel_values"], 4, None, opts, sample_shape=(3, 224, 224))
    assert profile == {"pixel_values": ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))}


@pytest.mark.parametrize(
    "batch, seq, opts, match",
    [
        (8, 128, TensorRTOptions(max_batch=4), "max_batch=4"),
        (1, 128, TensorRTOptions(min_batch=2), "min_batch=2"),
        (8, 128, TensorRTOptions(max_seq=64), "max_seq=64"),
        (8, 8, TensorRTOptions(min_seq=16), "min_seq=16"),
        (8, None, TensorRTOptions(), "sequence length"),
    ],
)
def test_profile_outside_options_is_a_config_error(batch, seq, opts, match):
    with pytest.raises(ConfigError, match=match):
        shape_profile(["input_ids"], batch, seq, opts)


def test_pin_static_dims_pins_min_and_max_to_a_matching_static_dim():
    profile = {"x": ((1, 1), (4, 16), (4, 16))}
    assert pin_static_dims(profile, {"x": (4, None)}) == {"x": ((4, 1), (4, 16), (4, 16))}


def test_pin_static_dims_refuses_a_static_dim_the_run_cannot_use():
    with pytest.raises(ConfigError, match="static dim 0 = 1"):
        pin_static_dims({"x": ((1, 1), (4, 16), (4, 16))}, {"x": (1, None)})
    with pytest.raises(ConfigError, match="rank 3"):
        pin_static_dims({"x": ((1, 1), (4, 16), (4, 16))}, {"x": (None, None, None)})


def test_profile_for_onnx_treats_rank2_as_tokens_and_reads_static_image_dims():
    dims = {"input_ids": (None, None), "pixel_values": (None, 3, 32, 32)}
    profile = profile_for_onnx(dims, 2, 16, TensorRTOptions(max_batch=8))
    assert profile == {
        "input_ids": ((1, 1), (2, 16), (8, 16)),
        "pixel_values": ((1, 3, 32, 32), (2, 3, 32, 32), (8, 3, 32, 32)),
    }


def test_profile_for_onnx_reads_a_static_feature_dim_without_seq_len():
    profile = profile_for_onnx({"x": (None, 4)}, 2, None, TensorRTOptions(max_batch=4))
    assert profile == {"x": ((1, 4), (2, 4), (4, 4))}
    with pytest.raises(ConfigError, match="sequence length"):
        profile_for_onnx({"input_ids": (None, None)}, 2, None, TensorRTOptions())


def test_profile_for_onnx_needs_a_sample_shape_for_dynamic_image_dims():
    with pytest.raises(ConfigError, match="no sample shape") as info:
        profile_for_onnx({"pixel_values": (None, 3, None, None)}, 2, None, TensorRTOptions())
    assert "meta 'sample_shape'" in info.value.one_line()
    profile = profile_for_onnx({"pixel_values": (None, 3, None, None)}, 2, None, TensorRTOptions(), [3, 64, 64])
    assert profile["pixel_values"] == ((1, 3, 64, 64), (2, 3, 64, 64), (2, 3, 64, 64))


# --- precision plans -------------------------------------------------------------------


@pytest.mark.parametrize(
    "precision, version, qdq, ftype, strongly_typed, flags, convert_to",
    [
        ("fp32", "10.13.0.35", False, "fp32", True, (), None),
        ("fp32", "11.0.0", False, "fp32", True, (), None),
        ("fp16", "10.13.0.35", False, "fp32", False, ("FP16",), None),
        ("bf16", "10.8.0", False, "fp32", False, ("BF16",), None),
        ("fp16", "10.13.0.35", False, "fp16", True, (), None),
        ("bf16", "10.13.0.35", False, "bf16", True, (), None),
        ("fp16", "11.1.0", False, "fp32", True, (), "fp16"),
        ("bf16", "11.1.0", False, "fp32", True, (), "bf16"),
        ("fp16", "11.1.0", False, "fp16", True, (), None),
        ("int8", "10.13.0.35", True, "fp32", True, (), None),
        ("int8", "11.0.0", True, "fp32", True, (), None),
    ],
)
def test_precision_plan(precision, version, qdq, ftype, strongly_typed, flags, convert_to):
    plan = precision_plan(precision, version, qdq, ftype)
    assert (plan.precision, plan.strongly_typed, plan.builder_flags, plan.convert_to) == (
        precision,
        strongly_typed,
        flags,
        convert_to,
    )
    assert plan.note


def test_precision_plan_on_11_says_the_onnx_must_be_converted():
    plan = precision_plan("fp16", (11, 0), False, "fp32")
    assert "removed BuilderFlag.FP16" in plan.note and "converted to fp16" in plan.note


def test_weak_typing_on_10_is_flagged_deprecated():
    assert "deprecated since TensorRT 10.12" in precision_plan("fp16", "10.13", False).note


@pytest.mark.parametrize("version", ["10.13.0.35", "11.0.0"])
def test_int8_without_qdq_is_unsupported_with_the_recipe_named(version):
    with pytest.raises(Unsupported) as info:
        precision_plan("int8", version, onnx_has_qdq=False)
    line = info.value.one_line()
    assert "\n" not in line
    assert "explicit Q/DQ ONNX from the static QDQ quantization recipe" in line
    assert "TensorRT 11 removed implicit INT8 calibration" in line
    assert info.value.status == "unsupported"


@pytest.mark.parametrize(
    "precision, version, qdq, ftype, match",
    [
        ("fp32", "10.13", True, "fp32", "Q/DQ nodes"),
        ("fp16", "11.0", True, "fp32", "Q/DQ nodes"),
        ("fp32", "10.13", False, "fp16", "not fp32"),
        ("fp16", "10.13", False, "bf16", "cannot build fp16"),
        ("fp8", "10.13", False, "fp32", "no precision 'fp8'"),
    ],
)
def test_precision_plan_refuses_mislabelled_runs(precision, version, qdq, ftype, match):
    with pytest.raises(Unsupported, match=match):
        precision_plan(precision, version, qdq, ftype)


def test_precision_plan_refuses_unsupported_majors():
    with pytest.raises(Unavailable, match="8.x unsupported"):
        precision_plan("fp32", "8.6.1", False)


def test_network_flags():
    strong = precision_plan("fp32", "10.13", False)
    weak = precision_plan("fp16", "10.13", False)
    assert network_flags(strong, 10, strongly_typed_bit=1) == 0b10
    assert network_flags(weak, 10, strongly_typed_bit=1) == 0
    assert network_flags(strong, 11, strongly_typed_bit=0) == 0  # always strongly typed on 11


# --- ONNX facts ------------------------------------------------------------------------


def test_qdq_detection(tmp_path):
    assert onnx_has_qdq(_matmul_model(tmp_path)) is False
    assert onnx_has_qdq(_qdq_model(tmp_path)) is True


def test_qdq_detection_ignores_contrib_domain_and_sees_subgraphs(tmp_path):
    assert onnx_has_qdq(_qdq_model(tmp_path, domain="com.microsoft", name="contrib.onnx")) is False

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
    assert qdq_problem(_qdq_model(tmp_path)) is None
    assert "uint8 zero point" in qdq_problem(_qdq_model(tmp_path, zp_type=TensorProto.UINT8, zp_value=128, name="u8.onnx"))
    assert "nonzero zero point" in qdq_problem(_qdq_model(tmp_path, zp_value=3, name="nz.onnx"))


def test_onnx_float_type(tmp_path):
    assert onnx_float_type(_matmul_model(tmp_path, TensorProto.FLOAT, "f32.onnx")) == "fp32"
    assert onnx_float_type(_matmul_model(tmp_path, TensorProto.FLOAT16, "f16.onnx")) == "fp16"
    assert onnx_float_type(_matmul_model(tmp_path, TensorProto.BFLOAT16, "bf16.onnx")) == "bf16"


def test_onnx_input_dims_excludes_initializers(tmp_path):
    path = _matmul_model(tmp_path)
    model = onnx.load(str(path))
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]))  # old-style exporters
    onnx.save(model, str(path))
    assert onnx_input_dims(path) == {"x": (None, 4)}
    assert onnx_input_dims(_matmul_model(tmp_path, name="static.onnx", batch=2)) == {"x": (2, 4)}


def test_onnx_sha256_covers_external_weights(tmp_path):
    path = _matmul_model(
        tmp_path, name="ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0
    )
    first = onnx_sha256(path)
    assert first == onnx_sha256(path)
    data = tmp_path / "ext.data"
    blob = bytearray(data.read_bytes())
    blob[0] ^= 0xFF
    data.write_bytes(bytes(blob))
    assert onnx_sha256(path) != first


# --- cache keys ------------------------------------------------------------------------

KEY_ARGS = dict(
    onnx_sha256="a" * 64,
    trt_version="10.13.0.35",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    precision="fp16",
    profile={"input_ids": ((1, 1), (8, 128), (8, 128)), "attention_mask": ((1, 1), (8, 128), (8, 128))},
    builder={"builder_optimization_level": 3, "workspace_gb": 4.0, "tf32": False},
)


def test_engine_cache_key_is_stable():
    key = engine_cache_key(**KEY_ARGS)
    assert re.fullmatch(r"[0-9a-f]{20}", key)
    reordered = dict(KEY_ARGS)
    reordered["profile"] = {
        "attention_mask": [[1, 1], [8, 128], [8, 128]],
        "input_ids": [[1, 1], [8, 128], [8, 128]],
    }
    reordered["compute_capability"] = "9.0"
    assert engine_cache_key(**reordered) == key


@pytest.mark.parametrize(
    "field, value",
    [
        ("onnx_sha256", "b" * 64),
        ("trt_version", "11.0.0"),
        ("gpu_name", "NVIDIA H200"),
        ("compute_capability", (8, 9)),
        ("precision", "fp32"),
        ("profile", {"input_ids": ((1, 1), (8, 128), (16, 128)), "attention_mask": ((1, 1), (8, 128), (8, 128))}),
        ("builder", {"builder_optimization_level": 5, "workspace_gb": 4.0, "tf32": False}),
    ],
)
def test_engine_cache_key_changes_with_each_input(field, value):
    assert engine_cache_key(**{**KEY_ARGS, field: value}) != engine_cache_key(**KEY_ARGS)


def test_timing_cache_key_depends_on_version_and_gpu_only():
    key = timing_cache_key("10.13.0.35", "NVIDIA H100", (9, 0))
    assert key == timing_cache_key("10.13.0.35", "NVIDIA H100", "9.0")
    assert key != timing_cache_key("10.14.0", "NVIDIA H100", (9, 0))
    assert key != timing_cache_key("10.13.0.35", "NVIDIA L4", (8, 9))


# --- versions and probe ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, parsed",
    [("10.13.0.35", (10, 13, 0, 35)), ("11.0.0b1", (11, 0, 0)), ("8.6", (8, 6)), (" 10.1.0 ", (10, 1, 0)), ("10.x", (10,))],
)
def test_parse_version(text, parsed):
    assert parse_version(text) == parsed


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError):
        parse_version("abc")


@pytest.mark.parametrize(
    "version, reason",
    [
        ("10.0.1", None),
        ("10.13.0.35", None),
        ("11.0.0b1", None),
        ("8.6.1", "tensorrt 8.6 unsupported (need 10.x or 11.x)"),
        ("12.0", "tensorrt 12.0 unsupported (need 10.x or 11.x)"),
        ("dev", "tensorrt version 'dev' is unparseable (need 10.x or 11.x)"),
    ],
)
def test_check_version(version, reason):
    assert check_version(version) == reason


@pytest.mark.parametrize(
    "version, devices, index, reason",
    [
        (None, 0, 0, REASON_NOT_INSTALLED),
        (None, 2, 0, REASON_NOT_INSTALLED),
        ("8.6.1", 2, 0, "tensorrt 8.6 unsupported (need 10.x or 11.x)"),
        ("10.13.0", 0, 0, REASON_NO_CUDA),
        ("11.0.0", 1, 1, "cuda:1 not visible (1 CUDA device(s); set backend.device_index)"),
        ("10.13.0", 1, 0, None),
    ],
)
def test_probe_reason(version, devices, index, reason):
    assert probe_reason(version, devices, index) == reason


def test_reason_strings_are_exact():
    assert REASON_NOT_INSTALLED == "tensorrt not installed (pip install tensorrt from NVIDIA's index)"
    assert REASON_NO_CUDA == "no CUDA device visible (torch.cuda.is_available() is False)"


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


# --- parser errors, dtypes, driver -----------------------------------------------------


class _Error:
    def __init__(self, node, name, op, desc, code="UNSUPPORTED_NODE"):
        self._node, self._name, self._op, self._desc, self._code = node, name, op, desc, code

    def node(self):
        return self._node

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def desc(self):
        return self._desc

    def code(self):
        return SimpleNamespace(name=self._code)


class _OldError:
    """A binding without node_name/node_operator (older than the 10.x parser)."""

    def node(self):
        return 2

    def desc(self):
        return "Assertion failed:\n  shiftIsAllZeros(zeroPoint)"


class _Parser:
    def __init__(self, errors):
        self.errors = errors
        self.num_errors = len(errors)

    def get_error(self, index):
        return self.errors[index]


def test_format_parser_errors():
    parser = _Parser(
        [
            _Error(3, "/encoder/MatMul", "MatMul", "Unsupported datatype"),
            _Error(-1, "", "", "Invalid graph", code="INVALID_GRAPH"),
            _OldError(),
        ]
    )
    assert format_parser_errors(parser) == [
        "node 3 ('/encoder/MatMul', MatMul) [UNSUPPORTED_NODE]: Unsupported datatype",
        "graph [INVALID_GRAPH]: Invalid graph",
        "node 2: Assertion failed: shiftIsAllZeros(zeroPoint)",
    ]
    assert format_parser_errors(_Parser([])) == []


def test_torch_dtype_names_exist_in_torch():
    import torch

    for trt_name, torch_name in trt_backend.TRT_TO_TORCH_DTYPE.items():
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
    artifact = Artifact("m", ("x",), ("y",), onnx_path=_matmul_model(tmp_path), meta={"batch_size": 2})
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
    trt = pytest.importorskip(
        "tensorrt", reason="tensorrt not installed (pip install tensorrt from NVIDIA's index)"
    )
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible (torch.cuda.is_available() is False)")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))

    path = _matmul_model(tmp_path)
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
    assert trt_backend.qdq_problem(out.onnx_path) is None
