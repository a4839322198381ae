"""Engine build: ONNX -> serialized TensorRT engine, against the TensorRT 10.x/11.x Python API.

Written against the documented API (checked against the 10.x and 11.x Python API
references and migration guides, and the 11.1 Python bindings); not yet run on a GPU
here. The calls, in order:

- ``trt.Builder(logger).create_network(flags)``: ``flags`` is
  ``1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED`` for a strongly typed plan on
  10.x and 0 on 11.x, where every network is strongly typed and the flag is deprecated
  and ignored (11.x also dropped ``EXPLICIT_BATCH``, so the flag's bit is read from the
  binding, never hard-coded).
- ``trt.OnnxParser(network, logger).parse_from_file(path)``; errors through
  ``num_errors`` / ``get_error(i)``.
- ``builder.create_builder_config()``: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE,
  bytes)``, ``builder_optimization_level``, ``clear_flag(BuilderFlag.TF32)`` (still a
  flag in 11.x, on by default), and ``set_flag(BuilderFlag.FP16 / BF16)`` only for a
  weakly typed 10.x plan (11.x removed the precision flags).
- ``builder.create_optimization_profile().set_shape(name, min, opt, max)`` and
  ``config.add_optimization_profile(profile)``, which returns -1 for an invalid profile.
- ``config.create_timing_cache(blob)`` / ``set_timing_cache(cache, ignore_mismatch)``,
  which returns False for a cache it rejects; ``ITimingCache.serialize()`` after the
  build.
- ``builder.build_serialized_network(network, config)`` -> ``IHostMemory`` or None.

INT8 never touches a calibrator or ``BuilderFlag.INT8``: it is explicit quantization
(Q/DQ nodes in a strongly typed network), the only INT8 TensorRT 11 has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import HarnessError

from .cache import builder_settings, engine_cache_key, engine_path, timing_cache_path, write_atomic
from .options import TensorRTOptions
from .plan import PrecisionPlan, Profile, network_flags, parse_version


def _error_field(error: Any, attr: str) -> Any:
    """``error.<attr>()``, or None when this binding lacks the accessor or it fails."""
    getter = getattr(error, attr, None)
    try:
        return getter() if callable(getter) else None
    except Exception:
        return None


def format_parser_errors(parser: Any) -> list[str]:
    """One line per ``trt.OnnxParser`` error: node index, name and operator, then the text.

    Uses ``ParserError.node()/node_name()/node_operator()/desc()/code()``; the name and
    operator accessors are looked up defensively so an older binding still formats.
    """
    lines: list[str] = []
    for index in range(int(parser.num_errors)):
        error = parser.get_error(index)
        node = _error_field(error, "node")
        name = _error_field(error, "node_name") or ""
        op = _error_field(error, "node_operator") or ""
        desc = " ".join(str(_error_field(error, "desc") or "unknown error").split())
        code = _error_field(error, "code")
        where = "graph"
        if isinstance(node, int) and node >= 0:
            where = f"node {node}"
            detail = ", ".join(x for x in (f"'{name}'" if name else "", op) if x)
            if detail:
                where += f" ({detail})"
        code_text = f" [{getattr(code, 'name', code)}]" if code is not None else ""
        lines.append(f"{where}{code_text}: {desc}")
    return lines


def attach_timing_cache(config: Any, blob: bytes) -> Any:
    """Attach the stored timing cache ``blob`` to ``config``, or a fresh one; return it.

    ``set_timing_cache`` returns False for a cache it rejects (one written by another
    device or TensorRT build), and ``create_timing_cache`` may return None for bytes it
    cannot read. Either way the build goes on with an empty cache, which the caller
    then writes back, instead of failing after the build on a cache that was never set.
    The returned object must stay alive until the build is done.
    """
    cache = config.create_timing_cache(blob) if blob else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise HarnessError("tensorrt refused an empty timing cache", "set backend.timing_cache=false")
    return cache


def _configure(trt: Any, config: Any, plan: PrecisionPlan, options: TensorRTOptions) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    config.builder_optimization_level = options.builder_optimization_level
    if not options.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))


def _add_profile(builder: Any, config: Any, profile: Profile) -> None:
    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        trt_profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(trt_profile) < 0:
        shapes = ", ".join(f"{name}: min {list(lo)} opt {list(opt)} max {list(hi)}" for name, (lo, opt, hi) in profile.items())
        raise HarnessError(f"tensorrt rejected the optimization profile ({shapes}); see the TensorRT log above")


def build_serialized_engine(
    trt: Any,
    logger: Any,
    onnx_path: Path,
    plan: PrecisionPlan,
    profile: Profile,
    options: TensorRTOptions,
    timing_cache: Path | None = None,
) -> bytes:
    """Parse the ONNX and build a serialized engine; read and update ``timing_cache`` when given."""
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    major = parse_version(str(trt.__version__))[0]
    flags = network_flags(plan, major, int(strongly_typed)) if strongly_typed is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = format_parser_errors(parser) or ["no parser error recorded"]
        raise HarnessError(f"tensorrt could not parse {onnx_path.name}: " + "; ".join(errors))

    config = builder.create_builder_config()
    _configure(trt, config, plan, options)
    _add_profile(builder, config, profile)
    timing: Any = None
    if timing_cache is not None:
        timing = attach_timing_cache(config, timing_cache.read_bytes() if timing_cache.exists() else b"")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HarnessError(f"tensorrt engine build failed for {onnx_path.name} (see the TensorRT log above)")
    if timing_cache is not None:
        write_atomic(timing_cache, bytes(timing.serialize()))
    return bytes(serialized)


def load_or_build_engine(
    trt: Any,
    logger: Any,
    onnx_path: Path,
    onnx_sha256: str,
    plan: PrecisionPlan,
    profile: Profile,
    options: TensorRTOptions,
    gpu_name: str,
    compute_capability: tuple[int, int],
) -> tuple[bytes, Path]:
    """The serialized engine for these inputs and its cache file: loaded when cached, else built and stored."""
    version = str(trt.__version__)
    key = engine_cache_key(onnx_sha256, version, gpu_name, compute_capability, plan.precision, profile, builder_settings(options))
    path = engine_path(key)
    if path.exists():
        return path.read_bytes(), path
    timing = timing_cache_path(version, gpu_name, compute_capability) if options.timing_cache else None
    serialized = build_serialized_engine(trt, logger, onnx_path, plan, profile, options, timing)
    write_atomic(path, serialized)
    return serialized, path
