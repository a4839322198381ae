"""The engine build and its cache, checked without a GPU.

Cache keys and parser-error lines are pure functions. The build itself is driven
through a small stand-in for the ``tensorrt`` module that records the calls, which pins
the order and arguments of the documented builder API calls (network flags per major
version, TF32, precision flags, the profile, the timing cache) and the engine cache;
the real build is ``test_tensorrt.py::test_build_and_run_real_engine``.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from harness.backends.tensorrt.build import (
    attach_timing_cache,
    build_serialized_engine,
    format_parser_errors,
    load_or_build_engine,
)
from harness.backends.tensorrt.cache import engine_cache_key, timing_cache_key, write_atomic
from harness.backends.tensorrt.options import TensorRTOptions
from harness.backends.tensorrt.plan import precision_plan
from harness.errors import HarnessError


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


# --- parser errors ----------------------------------------------------------------------


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


# --- the build, driven through a stand-in for the tensorrt module -------------------------


class _TimingCache:
    def __init__(self, blob):
        self.blob = blob

    def serialize(self):
        return memoryview(self.blob + b"+timings")  # an IHostMemory is a buffer too


class _Config:
    def __init__(self, log, rejects, profile_index):
        self.log, self.rejects, self.profile_index = log, rejects, profile_index
        self.builder_optimization_level = None

    def set_memory_pool_limit(self, pool, size):
        self.log.append(("pool", pool, size))

    def clear_flag(self, flag):
        self.log.append(("clear_flag", flag))

    def set_flag(self, flag):
        self.log.append(("set_flag", flag))

    def add_optimization_profile(self, profile):
        self.log.append(("profile", profile.shapes))
        return self.profile_index

    def create_timing_cache(self, blob):
        self.log.append(("create_timing_cache", bytes(blob)))
        return None if blob == b"unreadable" else _TimingCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.log.append(("set_timing_cache", cache.blob, ignore_mismatch))
        return cache.blob not in self.rejects


class _Builder:
    def __init__(self, log, config, engine):
        self.log, self.config, self.engine = log, config, engine

    def create_network(self, flags):
        self.log.append(("create_network", flags))
        return "network"

    def create_builder_config(self):
        return self.config

    def create_optimization_profile(self):
        profile = SimpleNamespace(shapes={})
        profile.set_shape = lambda name, lo, opt, hi: profile.shapes.__setitem__(name, (lo, opt, hi))
        return profile

    def build_serialized_network(self, network, config):
        self.log.append(("build", network))
        return self.engine


def _fake_trt(version="10.13.0.35", parses=True, rejects=(), profile_index=0, engine=b"engine-bytes"):
    """A stand-in for ``import tensorrt`` with the members the build uses; ``.log`` records the calls."""
    log = []
    config = _Config(log, set(rejects), profile_index)
    parser = SimpleNamespace(
        parse_from_file=lambda path: log.append(("parse_from_file", path)) or parses,
        num_errors=0 if parses else 1,
        get_error=lambda i: SimpleNamespace(node=lambda: 2, desc=lambda: "Unsupported ONNX op"),
    )
    strongly_typed_bit = 1 if version.startswith("10.") else 0  # 11.x dropped EXPLICIT_BATCH (bit 0 on 10.x)

    def builder(logger):
        log.append(("Builder", logger))
        return _Builder(log, config, engine)

    return SimpleNamespace(
        __version__=version,
        log=log,
        Builder=builder,
        OnnxParser=lambda network, logger: parser,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=strongly_typed_bit),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        BuilderFlag=SimpleNamespace(TF32="TF32", FP16="FP16", BF16="BF16"),
    )


PROFILE = {"x": ((1, 4), (2, 4), (4, 4))}
FP32_ON_10 = precision_plan("fp32", "10.13.0.35", False)


def _build(trt, tmp_path, options=None, timing_cache=None):
    options = options if options is not None else TensorRTOptions()
    return build_serialized_engine(trt, "logger", tmp_path / "m.onnx", FP32_ON_10, PROFILE, options, timing_cache)


def _calls(trt, name):
    return [entry[1:] for entry in trt.log if entry[0] == name]


@pytest.mark.parametrize(
    "version, precision, flags, set_flags",
    [
        ("10.13.0.35", "fp32", 0b10, []),  # strongly typed: 1 << STRONGLY_TYPED (bit 1 on 10.x)
        ("10.13.0.35", "fp16", 0, [("FP16",)]),  # weakly typed with the precision flag
        ("11.1.0", "fp32", 0, []),  # always strongly typed; the flag is ignored, so not passed
    ],
)
def test_build_sets_network_flags_and_builder_config(tmp_path, version, precision, flags, set_flags):
    trt = _fake_trt(version)
    plan = precision_plan(precision, version, False)
    options = TensorRTOptions(workspace_gb=0.5, builder_optimization_level=1)
    assert build_serialized_engine(trt, "logger", tmp_path / "m.onnx", plan, PROFILE, options) == b"engine-bytes"
    assert _calls(trt, "create_network") == [(flags,)]
    assert _calls(trt, "parse_from_file") == [(str(tmp_path / "m.onnx"),)]
    assert _calls(trt, "pool") == [("WORKSPACE", 2**29)]
    assert _calls(trt, "clear_flag") == [("TF32",)]  # "fp32" means IEEE fp32
    assert _calls(trt, "set_flag") == set_flags
    assert _calls(trt, "profile") == [(PROFILE,)]
    assert _calls(trt, "create_timing_cache") == []  # no timing cache asked for


def test_build_keeps_tf32_when_asked(tmp_path):
    trt = _fake_trt()
    _build(trt, tmp_path, TensorRTOptions(tf32=True))
    assert _calls(trt, "clear_flag") == []


@pytest.mark.parametrize(
    "trt, match",
    [
        (_fake_trt(parses=False), r"could not parse m.onnx: node 2: Unsupported ONNX op"),
        (_fake_trt(profile_index=-1), r"rejected the optimization profile \(x: min \[1, 4\] opt \[2, 4\] max \[4, 4\]"),
        (_fake_trt(engine=None), "engine build failed for m.onnx"),
    ],
)
def test_build_failures_say_what_failed(tmp_path, trt, match):
    with pytest.raises(HarnessError, match=match):
        _build(trt, tmp_path)


def test_build_reads_and_rewrites_the_timing_cache(tmp_path):
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"stored")
    trt = _fake_trt()
    _build(trt, tmp_path, timing_cache=timing)
    assert _calls(trt, "set_timing_cache") == [(b"stored", False)]
    assert timing.read_bytes() == b"stored+timings"  # the cache the build updated, written back


@pytest.mark.parametrize(
    "stored, rejects, used",
    [
        (b"", (), b""),  # nothing stored yet: a fresh cache
        (b"stored", (), b"stored"),  # accepted: reused
        (b"stored", (b"stored",), b""),  # rejected (another device or build): a fresh cache, not a failed build
        (b"unreadable", (), b""),  # create_timing_cache returned None
    ],
)
def test_attach_timing_cache_falls_back_to_a_fresh_cache(stored, rejects, used):
    trt = _fake_trt(rejects=rejects)
    config = trt.Builder("logger").create_builder_config()
    assert attach_timing_cache(config, stored).blob == used
    assert _calls(trt, "set_timing_cache")[-1] == (used, False)


def test_attach_timing_cache_refused_even_empty_is_an_error():
    config = _fake_trt(rejects=(b"",)).Builder("logger").create_builder_config()
    with pytest.raises(HarnessError, match="refused an empty timing cache") as info:
        attach_timing_cache(config, b"")
    assert "backend.timing_cache=false" in info.value.one_line()


def test_load_or_build_engine_builds_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    args = (tmp_path / "m.onnx", "a" * 64, FP32_ON_10, PROFILE, TensorRTOptions())
    trt = _fake_trt()
    engine, path = load_or_build_engine(trt, "logger", *args, "NVIDIA H100", (9, 0))
    assert engine == b"engine-bytes" and path.read_bytes() == b"engine-bytes"
    settings = {"builder_optimization_level": 3, "workspace_gb": 4.0, "tf32": False}
    key = engine_cache_key("a" * 64, "10.13.0.35", "NVIDIA H100", (9, 0), "fp32", PROFILE, settings)
    assert path == tmp_path / "cache" / "tensorrt" / key / "engine.plan"
    timing_key = timing_cache_key("10.13.0.35", "NVIDIA H100", (9, 0))
    timing = tmp_path / "cache" / "tensorrt-timing" / timing_key / "timing.cache"
    assert timing.read_bytes() == b"+timings"

    again = _fake_trt()
    assert load_or_build_engine(again, "logger", *args, "NVIDIA H100", (9, 0)) == (b"engine-bytes", path)
    assert again.log == []  # served from the cache: no builder at all

    other_gpu = _fake_trt()
    _, other = load_or_build_engine(other_gpu, "logger", *args, "NVIDIA L4", (8, 9))
    assert other != path and _calls(other_gpu, "build")


def test_load_or_build_engine_without_timing_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    trt = _fake_trt()
    options = TensorRTOptions(timing_cache=False)
    load_or_build_engine(trt, "logger", tmp_path / "m.onnx", "a" * 64, FP32_ON_10, PROFILE, options, "GPU", (9, 0))
    assert _calls(trt, "create_timing_cache") == [] and not (tmp_path / "cache" / "tensorrt-timing").exists()


def test_write_atomic_leaves_no_temp_file(tmp_path):
    target = tmp_path / "engine.plan"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["engine.plan"]
