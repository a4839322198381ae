"""Where TensorRT engines and builder timing caches live in the harness artifact cache.

A serialized engine is only valid for the TensorRT version and GPU it was built on, and
its bytes depend on the network, the precision, the optimization profile and the build
settings; its key covers all of them, so a changed input never loads a stale engine.
The timing cache only records kernel timings, so it is shared by every engine of one
TensorRT version on one GPU model.

Layout: ``<cache>/tensorrt/<key>/engine.plan`` and
``<cache>/tensorrt-timing/<key>/timing.cache``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness import cache as harness_cache

from .options import TensorRTOptions

ShapeTriple = tuple[Sequence[int], Sequence[int], Sequence[int]]


def _cc_text(compute_capability: Sequence[int] | str) -> str:
    """``(9, 0)`` or ``"9.0"`` -> ``"9.0"``, so both spellings give the same key."""
    if isinstance(compute_capability, str):
        return compute_capability
    return ".".join(str(int(c)) for c in compute_capability)


def _profile_json(profile: Mapping[str, ShapeTriple]) -> dict[str, list[list[int]]]:
    return {name: [list(map(int, s)) for s in shapes] for name, shapes in sorted(profile.items())}


def engine_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: Sequence[int] | str,
    precision: str,
    profile: Mapping[str, ShapeTriple],
    builder: Mapping[str, Any] | None = None,
) -> str:
    """Key of a serialized engine: everything that decides its bytes.

    Engines are specific to the TensorRT version and the GPU (name + compute
    capability); the ONNX hash, precision and profile decide the network; ``builder``
    holds build settings that change tactics (optimization level, workspace, tf32).
    """
    return harness_cache.content_key(
        "tensorrt-engine",
        onnx_sha256,
        trt_version,
        gpu_name,
        _cc_text(compute_capability),
        precision,
        _profile_json(profile),
        dict(builder or {}),
    )


def timing_cache_key(trt_version: str, gpu_name: str, compute_capability: Sequence[int] | str) -> str:
    """Key of the builder timing cache, shared by all engines of one TensorRT + GPU."""
    return harness_cache.content_key("tensorrt-timing", trt_version, gpu_name, _cc_text(compute_capability))


def builder_settings(options: TensorRTOptions) -> dict[str, Any]:
    """The build options that change an engine's tactics, for its cache key."""
    return {
        "builder_optimization_level": options.builder_optimization_level,
        "workspace_gb": options.workspace_gb,
        "tf32": options.tf32,
    }


def engine_path(key: str) -> Path:
    """File of the serialized engine for ``key`` (its folder is created)."""
    return harness_cache.entry("tensorrt", key) / "engine.plan"


def timing_cache_path(trt_version: str, gpu_name: str, compute_capability: Sequence[int] | str) -> Path:
    """File of the timing cache for this TensorRT version and GPU (its folder is created)."""
    key = timing_cache_key(trt_version, gpu_name, compute_capability)
    return harness_cache.entry("tensorrt-timing", key) / "timing.cache"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename.

    Two runs building the same engine at once, or a run killed mid-write, must never
    leave a truncated engine that a later run would load. (Private to this backend
    until ``harness.cache`` offers a shared atomic-write helper.)
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
