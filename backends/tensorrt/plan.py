"""Pure decisions of the TensorRT backend: shape profiles, precision plans, versions.

Nothing here imports TensorRT, torch or ONNX, so every rule that decides what engine
gets built (and what a run refuses) is unit-tested on any machine.

Why precision is planned, not just flagged: TensorRT 10.12 deprecated weakly typed
networks and TensorRT 11 removed the precision builder flags (``BuilderFlag.FP16``,
``BF16``, ``INT8`` ...) and implicit INT8 calibration. In 11.x every network is
strongly typed, so the precision *is* the ONNX's tensor types: fp16/bf16 need an ONNX
already converted (ModelOpt AutoCast), INT8 needs explicit Q/DQ nodes.
:func:`precision_plan` turns (precision, version, ONNX facts) into one decision, and
refuses with :class:`~harness.errors.Unsupported` rather than silently measuring
something other than what was asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from harness.errors import ConfigError, Unavailable, Unsupported

from .options import TensorRTOptions

SUPPORTED_MAJORS = (10, 11)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
REASON_NOT_INSTALLED = "tensorrt not installed (pip install tensorrt from NVIDIA's index)"
REASON_NO_CUDA = "no CUDA device visible (torch.cuda.is_available() is False)"

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


# --- shape profiles ----------------------------------------------------------------


def _check_in_profile(what: str, value: int, key: str, lo: int, hi: int, meaning: str) -> None:
    """Refuse a measured ``value`` outside the profile's ``min_<key>..max_<key>``."""
    if not lo <= value <= hi:
        raise ConfigError(
            f"{what} {value} is outside the tensorrt profile min_{key}={lo}..max_{key}={hi}",
            f"set backend.min_{key} / backend.max_{key} so that they include {meaning}",
        )


def shape_profile(
    input_names: Sequence[str],
    batch_size: int,
    seq_len: int | None,
    options: TensorRTOptions,
    sample_shape: Sequence[int] | None = None,
) -> Profile:
    """``{name: (min, opt, max)}`` for one TensorRT optimization profile.

    Text inputs (``sample_shape`` is None) are ``(batch, seq)``; other inputs are
    ``(batch, *sample_shape)`` with only the batch dimension varying, e.g. images
    ``(batch, C, H, W)``. ``opt`` is the measured shape, because TensorRT tunes
    kernels for ``opt``; ``min``/``max`` come from the options.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    max_batch = options.max_batch if options.max_batch is not None else batch_size
    _check_in_profile("batch size", batch_size, "batch", options.min_batch, max_batch, "the scenario batch size")
    if sample_shape is None:
        if seq_len is None:
            raise ConfigError("a token input needs a sequence length; none was given")
        max_seq = options.max_seq if options.max_seq is not None else seq_len
        _check_in_profile("sequence length", seq_len, "seq", options.min_seq, max_seq, "the sequence length")
        lo: Shape = (options.min_batch, options.min_seq)
        opt: Shape = (batch_size, seq_len)
        hi: Shape = (max_batch, max_seq)
    else:
        rest = tuple(int(d) for d in sample_shape)
        if any(d < 1 for d in rest):
            raise ConfigError(f"sample shape {list(rest)} has a dimension < 1")
        lo, opt, hi = (options.min_batch, *rest), (batch_size, *rest), (max_batch, *rest)
    return {name: (lo, opt, hi) for name in input_names}


def pin_static_dims(profile: Profile, onnx_dims: Mapping[str, Sequence[int | None]]) -> Profile:
    """Make a profile agree with the ONNX's static dimensions.

    TensorRT rejects a profile whose min/max differ from a static dimension. When the
    measured (opt) value equals the static one, min and max are pinned to it (e.g. an
    ONNX exported with a fixed batch of 4 and ``batch_size=4``); when it differs, the
    measurement is impossible with this ONNX and a :class:`ConfigError` says why.
    """
    pinned: Profile = {}
    for name, (lo, opt, hi) in profile.items():
        dims = onnx_dims.get(name)
        if dims is None:
            pinned[name] = (lo, opt, hi)
            continue
        if len(dims) != len(opt):
            raise ConfigError(f"input '{name}' has rank {len(dims)} in the ONNX but the profile shape {list(opt)} has rank {len(opt)}")
        new_lo, new_hi = list(lo), list(hi)
        for axis, static in enumerate(dims):
            if static is None:
                continue
            if opt[axis] != static:
                raise ConfigError(
                    f"input '{name}' has static dim {axis} = {static} in the ONNX but the run needs {opt[axis]}",
                    "export the ONNX with that axis dynamic, or run with the size it was exported for",
                )
            new_lo[axis] = new_hi[axis] = static
        pinned[name] = (tuple(new_lo), opt, tuple(new_hi))
    return pinned


def profile_for_onnx(
    onnx_dims: Mapping[str, Sequence[int | None]],
    batch_size: int,
    seq_len: int | None,
    options: TensorRTOptions,
    sample_shape: Sequence[int] | None = None,
) -> Profile:
    """Profile for every ONNX input: rank-2 inputs are tokens, others take ``sample_shape``.

    A rank-2 input is ``(batch, seq)`` when a sequence length is given or its second
    dim is dynamic; a rank-2 input with a static second dim and no sequence length is
    a feature vector. When ``sample_shape`` is not given, a non-token input's
    per-sample shape must be fully static in the ONNX (e.g. ``[batch, 3, 224, 224]``).
    """
    profile: Profile = {}
    for name, dims in onnx_dims.items():
        is_tokens = len(dims) == 2 and sample_shape is None and (seq_len is not None or dims[1] is None)
        if is_tokens:
            part = shape_profile([name], batch_size, seq_len, options)
        else:
            rest = list(sample_shape) if sample_shape is not None else list(dims[1:])
            static = [int(d) for d in rest if d is not None]
            if len(static) != len(rest):
                raise ConfigError(
                    f"input '{name}' has dynamic non-batch dims {list(dims)} in the ONNX and no sample shape was given",
                    "set artifact meta 'sample_shape' (e.g. [3, 224, 224]) or export with static image dims",
                )
            part = shape_profile([name], batch_size, seq_len, options, sample_shape=static)
        profile.update(part)
    return pin_static_dims(profile, onnx_dims)


# --- versions and availability -------------------------------------------------------


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; suffixes such as ``"11.0.0b1"`` keep their number."""
    parts: list[int] = []
    for piece in str(version).strip().split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    if not parts:
        raise ValueError(f"cannot parse a version from {version!r}")
    return tuple(parts)


def check_version(version: str) -> str | None:
    """One-line reason when this TensorRT version is not one this backend drives, else None."""
    try:
        parts = parse_version(version)
    except ValueError:
        return f"tensorrt version {version!r} is unparseable (need 10.x or 11.x)"
    if parts[0] not in SUPPORTED_MAJORS:
        shown = ".".join(str(p) for p in parts[:2])
        return f"tensorrt {shown} unsupported (need 10.x or 11.x)"
    return None


def probe_reason(trt_version: str | None, cuda_devices: int, device_index: int = 0) -> str | None:
    """Why TensorRT cannot run here, checked in install order; None when it can.

    The library comes first (missing, then wrong major), then the device: a wrong
    package is fixed differently from a missing GPU, so the reason names the first
    thing the user has to fix.
    """
    if trt_version is None:
        return REASON_NOT_INSTALLED
    version_problem = check_version(trt_version)
    if version_problem:
        return version_problem
    if cuda_devices <= 0:
        return REASON_NO_CUDA
    if device_index >= cuda_devices:
        return f"cuda:{device_index} not visible ({cuda_devices} CUDA device(s); set backend.device_index)"
    return None


# --- precision planning --------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionPlan:
    """How an engine gets its precision on one TensorRT version.

    ``strongly_typed``: tensor types come from the ONNX (the network flag on 10.x, the
    only mode on 11.x). ``builder_flags``: names of ``trt.BuilderFlag`` members to set
    (weak typing, 10.x only). ``convert_to``: the ONNX must first be converted to this
    float type (11.x has no precision flags); the backend does not convert, so
    ``TensorRTBackend.prepare`` refuses such a plan. ``note`` explains the choice for
    the record.
    """

    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    convert_to: str | None = None
    note: str = ""


def precision_plan(
    precision: str,
    trt_version: str | Sequence[int],
    onnx_has_qdq: bool,
    onnx_float_type: str = "fp32",
) -> PrecisionPlan:
    """Decide strong typing vs builder flags for ``precision`` on this TensorRT version.

    ``onnx_float_type`` is what :func:`onnx_float_type` reports for the ONNX ("fp32",
    "fp16" or "bf16"). Raises :class:`Unsupported` for a combination that would
    measure something other than what was asked.
    """
    major = parse_version(trt_version)[0] if isinstance(trt_version, str) else int(trt_version[0])
    if major not in SUPPORTED_MAJORS:
        raise Unavailable(f"tensorrt {major}.x unsupported (need 10.x or 11.x)")
    if precision not in PRECISIONS:
        raise Unsupported(f"tensorrt has no precision '{precision}'", f"use one of: {', '.join(PRECISIONS)}")

    if precision == "int8":
        if not onnx_has_qdq:
            raise Unsupported(
                "tensorrt int8 needs an explicit Q/DQ ONNX from the static QDQ quantization recipe (TensorRT 11 removed implicit INT8 calibration)",
                "run with recipe int8_qdq so the ONNX carries QuantizeLinear/DequantizeLinear nodes",
            )
        return PrecisionPlan(
            "int8",
            strongly_typed=True,
            note="explicit quantization: Q/DQ nodes set INT8, strongly typed, no precision flags",
        )

    if onnx_has_qdq:
        raise Unsupported(
            f"the ONNX has Q/DQ nodes, so tensorrt would run it in int8, not {precision}",
            "ask for precision int8, or pass the unquantized ONNX",
        )

    if precision == "fp32":
        if onnx_float_type != "fp32":
            raise Unsupported(
                f"the ONNX is {onnx_float_type}; a strongly typed engine would run {onnx_float_type}, not fp32",
                "pass the fp32 ONNX",
            )
        return PrecisionPlan("fp32", strongly_typed=True, note="strongly typed from an fp32 ONNX")

    # fp16 / bf16
    if onnx_float_type == precision:
        return PrecisionPlan(precision, strongly_typed=True, note=f"strongly typed from a {precision} ONNX")
    if onnx_float_type != "fp32":
        raise Unsupported(
            f"the ONNX is {onnx_float_type}; tensorrt cannot build {precision} from it",
            f"pass the fp32 or the {precision} ONNX",
        )
    if major == 10:
        return PrecisionPlan(
            precision,
            strongly_typed=False,
            builder_flags=(precision.upper(),),
            note=f"weakly typed with BuilderFlag.{precision.upper()} (deprecated since TensorRT 10.12)",
        )
    return PrecisionPlan(
        precision,
        strongly_typed=True,
        convert_to=precision,
        note=(
            f"TensorRT 11 removed BuilderFlag.{precision.upper()}: precision comes from ONNX types, "
            f"so the ONNX must be converted to {precision} first (ModelOpt AutoCast)"
        ),
    )


def network_flags(plan: PrecisionPlan, major: int, strongly_typed_bit: int) -> int:
    """``create_network`` flags: the STRONGLY_TYPED bit on 10.x, nothing on 11.x.

    On 11.x every network is strongly typed and the flag is deprecated and ignored,
    so it is not passed. EXPLICIT_BATCH is never passed (ignored since 10.0).
    """
    if plan.strongly_typed and major == 10:
        return 1 << strongly_typed_bit
    return 0
