"""Pure logic of the TensorRT backend: options, shape profiles, precision plans, versions.

No TensorRT, GPU or ONNX file is needed: these rules decide which engine is built and
which runs are refused, so they are pinned here on any machine.
"""

from __future__ import annotations

import pytest

from harness.backends.tensorrt.options import TensorRTOptions
from harness.backends.tensorrt.plan import (
    REASON_NO_CUDA,
    REASON_NOT_INSTALLED,
    check_version,
    network_flags,
    parse_version,
    pin_static_dims,
    precision_plan,
    probe_reason,
    profile_for_onnx,
    shape_profile,
)
from harness.errors import ConfigError, Unavailable, Unsupported


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
