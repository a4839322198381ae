"""TensorRT backend: builds a serialized engine from an ONNX artifact and runs it on CUDA.

Status: the pure logic (options, shape profiles, precision plans, Q/DQ checks, cache
keys, version and probe reasons, parser-error formatting, timing-cache fallback) is
unit-tested on a CPU-only machine. The GPU path (engine build, load, run, fetch) is
written against the documented TensorRT 10.x / 11.x Python API and has **not yet been
run** here: no GPU or TensorRT wheel was available when it was written. Its integration
test is ``tests/test_tensorrt.py::test_build_and_run_real_engine`` (marker ``tensorrt``).

The package, one responsibility per module:

- :mod:`.options`: :class:`TensorRTOptions`, the typed ``conf/backend/tensorrt.yaml``.
- :mod:`.plan`: pure decisions: shape profiles, precision plans, versions, probe
  reasons, network flags.
- :mod:`.onnx_inspect`: facts read from the ONNX: Q/DQ nodes, float type, input dims,
  the content hash.
- :mod:`.cache`: engine and timing-cache keys and files in the harness cache.
- :mod:`.build`: the engine build against the TensorRT builder API.
- :mod:`.session`: :class:`TensorRTSession`, the engine run on a CUDA stream.
- here: :class:`TensorRTBackend`, which ties them together, and the plugin hook.

``tensorrt``, ``torch`` and ``onnx`` are imported inside functions only: the package
imports on any machine.

Artifact contract: ``prepare`` reads ``artifact.onnx_path`` and these ``artifact.meta``
keys: ``batch_size`` (required), ``seq_len`` (required for rank-2 token inputs),
``sample_shape`` (optional per-sample shape, e.g. ``[3, 224, 224]``, for inputs whose
non-batch dims are dynamic in the ONNX) and ``onnx_sha256`` (optional; hashed here
when absent).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.errors import ConfigError, Unavailable, Unsupported, exception_line
from harness.hardware import cuda_device_info
from harness.hookspecs import hookimpl

from .build import format_parser_errors, load_or_build_engine
from .cache import engine_cache_key, timing_cache_key
from .onnx_inspect import onnx_float_type, onnx_has_qdq, onnx_input_dims, onnx_sha256, qdq_problem
from .options import TensorRTOptions
from .plan import (
    PRECISIONS,
    REASON_NO_CUDA,
    REASON_NOT_INSTALLED,
    SUPPORTED_MAJORS,
    PrecisionPlan,
    Profile,
    check_version,
    network_flags,
    parse_version,
    pin_static_dims,
    precision_plan,
    probe_reason,
    profile_for_onnx,
    shape_profile,
)
from .session import TRT_TO_TORCH_DTYPE, TensorRTSession, deserialize_engine, torch_dtype_name

if TYPE_CHECKING:
    from harness.registry import Registry

HARNESS_PLUGIN_API = "2"

__all__ = [
    "PRECISIONS",
    "REASON_NOT_INSTALLED",
    "REASON_NO_CUDA",
    "SUPPORTED_MAJORS",
    "TRT_TO_TORCH_DTYPE",
    "PrecisionPlan",
    "TensorRTBackend",
    "TensorRTOptions",
    "TensorRTSession",
    "check_version",
    "cuda_device_count",
    "engine_cache_key",
    "format_parser_errors",
    "harness_register_backends",
    "installed_tensorrt_version",
    "network_flags",
    "onnx_float_type",
    "onnx_has_qdq",
    "onnx_input_dims",
    "onnx_sha256",
    "parse_version",
    "pin_static_dims",
    "precision_plan",
    "probe_reason",
    "profile_for_onnx",
    "qdq_problem",
    "shape_profile",
    "timing_cache_key",
    "torch_dtype_name",
]


# --- what is installed ---------------------------------------------------------------


def installed_tensorrt_version() -> str | None:
    """``tensorrt.__version__``, or None when the package is not installed.

    An import that fails for another reason (a broken install, missing CUDA
    libraries) raises, so that the probe can report it instead of "not installed".
    """
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "tensorrt":
            return None
        raise
    return str(trt.__version__)


def cuda_device_count() -> int:
    """Visible CUDA devices according to torch (0 on CPU-only builds)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@functools.cache
def _trt_logger() -> Any:
    """One TensorRT logger per process, shared by builders and runtimes.

    TensorRT keeps the first logger it is given as its global one and warns when a
    later builder or runtime brings a different one.
    """
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


# --- backend -------------------------------------------------------------------------


class TensorRTBackend(Backend):
    """NVIDIA TensorRT 10.x / 11.x on one CUDA device, consuming ONNX.

    Engines are cached under ``<cache>/tensorrt/<key>/engine.plan`` keyed by
    :func:`engine_cache_key`; the builder timing cache lives under
    ``<cache>/tensorrt-timing/<key>/timing.cache``.
    """

    name = "tensorrt"
    options_type = TensorRTOptions

    def __init__(self, options: TensorRTOptions | None = None) -> None:
        super().__init__(options if options is not None else TensorRTOptions())

    @classmethod
    def probe(cls, options: TensorRTOptions | None = None) -> Availability:
        options = options if options is not None else TensorRTOptions()
        try:
            version = installed_tensorrt_version()
        except Exception as exc:
            return Availability(False, f"tensorrt failed to import ({exception_line(exc)})")
        if version is None or check_version(version):
            return Availability(False, probe_reason(version, 0) or "", versions={"tensorrt": version or "missing"})
        try:
            count = cuda_device_count()
        except Exception as exc:
            return Availability(False, f"CUDA check failed ({exception_line(exc)})", versions={"tensorrt": version})
        reason = probe_reason(version, count, options.device_index)
        versions = {"tensorrt": version}
        if reason:
            return Availability(False, reason, versions=versions)
        import torch

        versions.update({"torch": torch.__version__, "cuda": str(torch.version.cuda)})
        return Availability(True, "", devices=tuple(f"cuda:{i}" for i in range(count)), versions=versions)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            precisions=frozenset(PRECISIONS),
            consumes=("onnx",),
            training=False,
            recipes=frozenset({"int8_qdq"}),
            # Starting values, not yet validated on a GPU; fp32 loosens when TF32 is allowed.
            tolerance={"fp32": 1e-2 if self.options.tf32 else 1e-3, "fp16": 2e-2, "bf16": 1e-1, "int8": 5e-1},
        )

    def version(self) -> str:
        try:
            return installed_tensorrt_version() or "not installed"
        except Exception:
            return "broken install"

    def device(self) -> str:
        return f"cuda:{self.options.device_index}"

    def device_info(self) -> dict[str, Any]:
        return cuda_device_info(self.options.device_index)

    def compress(self, artifact: Artifact, recipe: Any, calibration: Any) -> Artifact:
        """INT8 for TensorRT 10/11 is explicit quantization: a symmetric static Q/DQ ONNX
        (the ``int8_qdq`` recipe, calibrated on real samples), which ``prepare`` parses."""
        from harness.compression import onnx_quant
        from harness.compression.recipes import resolve_auto

        recipe = resolve_auto(recipe, {"transformer": "qdq", "cnn": "qdq"})
        if recipe.name != "int8_qdq" or artifact.onnx_path is None:
            return super().compress(artifact, recipe, calibration)
        out = calibration.workdir / "model.onnx"
        details = onnx_quant.realise(artifact.onnx_path, out, recipe, calibration.batches)
        return Artifact(
            artifact.name,
            artifact.input_names,
            artifact.output_names,
            onnx_path=out,
            meta={**artifact.meta, "precision": "int8", "recipe": details},
        )

    def prepare(self, artifact: Artifact, precision: str) -> Session:
        """Build (or load from cache) an engine for ``artifact`` and open a session.

        Everything that can refuse the run (precision, ONNX contents, profile) is
        checked before the GPU is touched. Not yet run on a GPU here.
        """
        self.check_precision(precision)
        availability = self.probe(self.options)
        if not availability.available:
            raise Unavailable(availability.reason)
        if artifact.onnx_path is None:
            raise Unsupported("tensorrt consumes ONNX; this artifact has no onnx_path")
        import tensorrt as trt
        import torch

        path = Path(artifact.onnx_path)
        plan = _plan_for_onnx(path, precision, str(trt.__version__))
        profile = _profile_for_artifact(path, artifact.meta, self.options)

        index = self.options.device_index
        torch.cuda.set_device(index)
        props = torch.cuda.get_device_properties(index)
        logger = _trt_logger()
        serialized, engine_path = load_or_build_engine(
            trt,
            logger,
            path,
            artifact.meta.get("onnx_sha256") or onnx_sha256(path),
            plan,
            profile,
            self.options,
            props.name,
            (props.major, props.minor),
        )
        engine, runtime = deserialize_engine(trt, logger, serialized, engine_path)
        return TensorRTSession(engine, runtime, index, plan)


def _plan_for_onnx(path: Path, precision: str, trt_version: str) -> PrecisionPlan:
    """The precision plan for this ONNX, refusing what the backend cannot build as asked."""
    has_qdq = onnx_has_qdq(path)
    plan = precision_plan(precision, trt_version, has_qdq, onnx_float_type(path))
    if plan.convert_to:
        raise Unsupported(plan.note, f"give tensorrt a {plan.convert_to} ONNX (python -m modelopt.onnx.autocast)")
    if has_qdq:
        problem = qdq_problem(path)
        if problem:
            raise Unsupported(problem, "rerun the int8_qdq recipe with symmetric int8 activations and weights")
    return plan


def _profile_for_artifact(path: Path, meta: Mapping[str, Any], options: TensorRTOptions) -> Profile:
    """The optimization profile for the artifact's measured shape and the ONNX's inputs."""
    if "batch_size" not in meta:
        raise ConfigError("artifact meta lacks 'batch_size'; tensorrt needs it for its optimization profile")
    return profile_for_onnx(onnx_input_dims(path), int(meta["batch_size"]), meta.get("seq_len"), options, meta.get("sample_shape"))


@hookimpl
def harness_register_backends(registry: "Registry") -> None:
    """Register :class:`TensorRTBackend` under the name ``tensorrt``."""
    registry.add_backend(TensorRTBackend)
