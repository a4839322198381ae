"""TensorRT backend: builds a serialized engine from an ONNX artifact and runs it on CUDA.

Status: the pure logic here (options, shape profiles, precision plans, Q/DQ checks,
cache keys, version and probe reasons, parser-error formatting) is unit-tested on a
CPU-only machine. The GPU path (engine build, load, run, fetch) is written against
the documented TensorRT 10.x / 11.x Python API and has **not yet been run** here: no
GPU or TensorRT wheel was available when it was written. Its integration test is
``tests/test_tensorrt.py::test_build_and_run_real_engine`` (marker ``tensorrt``).

Why precision is planned, not just flagged: TensorRT 10.12 deprecated weakly typed
networks and TensorRT 11 removed the precision builder flags (``BuilderFlag.FP16``,
``BF16``, ``INT8`` ...) and implicit INT8 calibration. In 11.x every network is
strongly typed, so the precision *is* the ONNX's tensor types: fp16/bf16 need an ONNX
already converted (ModelOpt AutoCast), INT8 needs explicit Q/DQ nodes.
:func:`precision_plan` turns (precision, version, ONNX facts) into one decision, and
refuses with :class:`~harness.errors.Unsupported` rather than silently measuring
something other than what was asked.

Device buffers are torch CUDA tensors and timing uses ``torch.cuda.Event``, so the
backend needs no pycuda / cuda-python. ``tensorrt``, ``torch`` and ``onnx`` are
imported inside functions only: this module imports on any machine.

Artifact contract: ``prepare`` reads ``artifact.onnx_path`` and these ``artifact.meta``
keys: ``batch_size`` (required), ``seq_len`` (required for rank-2 token inputs),
``sample_shape`` (optional per-sample shape, e.g. ``[3, 224, 224]``, for inputs whose
non-batch dims are dynamic in the ONNX) and ``onnx_sha256`` (optional; hashed here
when absent).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from harness import cache
from harness.backend import Artifact, Availability, Backend, Batch, Capabilities, Session
from harness.errors import ConfigError, HarnessError, Unavailable, Unsupported, exception_line
from harness.hookspecs import hookimpl
from harness.timing import CudaEventTimer
from harness.hardware import cuda_device_info

if TYPE_CHECKING:
    from harness.registry import Registry

HARNESS_PLUGIN_API = "1"

SUPPORTED_MAJORS = (10, 11)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
REASON_NOT_INSTALLED = "tensorrt not installed (pip install tensorrt from NVIDIA's index)"
REASON_NO_CUDA = "no CUDA device visible (torch.cuda.is_available() is False)"

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


# --- options -----------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRTOptions:
    """Typed options of the TensorRT backend (``conf/backend/tensorrt.yaml``).

    ``max_batch`` / ``max_seq`` default to the scenario's batch size / sequence length,
    so the engine's optimization profile is exactly the measured shape unless the user
    asks for headroom. ``tf32`` is off so that "fp32" means IEEE fp32 (TensorRT enables
    TF32 by default, which would blur the fp32 reference against eager).
    """

    device_index: int = 0
    workspace_gb: float = 4.0
    builder_optimization_level: int = 3
    min_batch: int = 1
    max_batch: Optional[int] = None
    min_seq: int = 1
    max_seq: Optional[int] = None
    timing_cache: bool = True
    tf32: bool = False

    def __post_init__(self) -> None:
        def bad(key: str, rule: str) -> ValueError:
            return ValueError(f"tensorrt option '{key}' {rule}, got {getattr(self, key)!r}")

        for key in ("device_index", "builder_optimization_level", "min_batch", "min_seq"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(key, "must be an integer")
        for key in ("max_batch", "max_seq"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(key, "must be an integer or null")
        for key in ("timing_cache", "tf32"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        if isinstance(self.workspace_gb, bool) or not isinstance(self.workspace_gb, (int, float)):
            raise bad("workspace_gb", "must be a number")
        if self.device_index < 0:
            raise bad("device_index", "must be >= 0")
        if not self.workspace_gb > 0:
            raise bad("workspace_gb", "must be > 0")
        if not 0 <= self.builder_optimization_level <= 5:
            raise bad("builder_optimization_level", "must be in 0..5")
        if self.min_batch < 1:
            raise bad("min_batch", "must be >= 1")
        if self.max_batch is not None and self.max_batch < self.min_batch:
            raise bad("max_batch", f"must be >= min_batch ({self.min_batch})")
        if self.min_seq < 1:
            raise bad("min_seq", "must be >= 1")
        if self.max_seq is not None and self.max_seq < self.min_seq:
            raise bad("max_seq", f"must be >= min_seq ({self.min_seq})")


# --- shape profiles ----------------------------------------------------------------


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
    if not options.min_batch <= batch_size <= max_batch:
        raise ConfigError(
            f"batch size {batch_size} is outside the tensorrt profile "
            f"min_batch={options.min_batch}..max_batch={max_batch}",
            "set backend.min_batch / backend.max_batch so that they include the scenario batch size",
        )
    if sample_shape is None:
        if seq_len is None:
            raise ConfigError("a token input needs a sequence length; none was given")
        max_seq = options.max_seq if options.max_seq is not None else seq_len
        if not options.min_seq <= seq_len <= max_seq:
            raise ConfigError(
                f"sequence length {seq_len} is outside the tensorrt profile "
                f"min_seq={options.min_seq}..max_seq={max_seq}",
                "set backend.min_seq / backend.max_seq so that they include the sequence length",
            )
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
            raise ConfigError(
                f"input '{name}' has rank {len(dims)} in the ONNX but the profile shape {list(opt)} has rank {len(opt)}"
            )
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
            if any(d is None for d in rest):
                raise ConfigError(
                    f"input '{name}' has dynamic non-batch dims {list(dims)} in the ONNX and no sample shape was given",
                    "set artifact meta 'sample_shape' (e.g. [3, 224, 224]) or export with static image dims",
                )
            part = shape_profile([name], batch_size, seq_len, options, sample_shape=[int(d) for d in rest])
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
    :meth:`TensorRTBackend.prepare` refuses such a plan. ``note`` explains the choice
    for the record.
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
                "tensorrt int8 needs an explicit Q/DQ ONNX from the static QDQ quantization recipe "
                "(TensorRT 11 removed implicit INT8 calibration)",
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


# --- ONNX facts ----------------------------------------------------------------------

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _load_onnx_structure(path: str | os.PathLike[str]) -> Any:
    import onnx

    return onnx.load(os.fspath(path), load_external_data=False)


def _all_nodes(model: Any) -> list[Any]:
    """Every node of the model: main graph, nested subgraphs (If/Loop/Scan) and functions."""
    import onnx

    nodes: list[Any] = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            nodes.append(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(attr.graphs)
    for function in model.functions:
        nodes.extend(function.node)
    return nodes


def onnx_has_qdq(path: str | os.PathLike[str]) -> bool:
    """True when the ONNX has standard-domain QuantizeLinear/DequantizeLinear nodes.

    Only the default ONNX domain counts: ``com.microsoft`` contrib Q/DQ (from ORT's
    ``use_qdq_contrib_ops``) is not parsed by TensorRT.
    """
    model = _load_onnx_structure(path)
    return any(n.op_type in _QDQ_OPS and n.domain in ("", "ai.onnx") for n in _all_nodes(model))


def qdq_problem(path: str | os.PathLike[str]) -> str | None:
    """Why TensorRT would reject this Q/DQ ONNX, or None.

    TensorRT supports symmetric quantization only: zero points must be all zeros and
    of a signed type (int8). An ORT recipe run with asymmetric uint8 activations parses
    fine in ONNX but fails in TensorRT's parser with an assertion; this says so first.
    """
    import onnx
    from onnx import numpy_helper

    model = _load_onnx_structure(path)
    inits = {t.name: t for t in model.graph.initializer}
    for node in _all_nodes(model):
        if node.op_type not in _QDQ_OPS or len(node.input) < 3 or not node.input[2]:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        label = node.name or node.output[0]
        if zp.data_type == onnx.TensorProto.UINT8:
            return f"{node.op_type} '{label}' has a uint8 zero point; tensorrt needs symmetric int8 Q/DQ"
        if zp.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if np.any(numpy_helper.to_array(zp) != 0):
            return f"{node.op_type} '{label}' has a nonzero zero point; tensorrt needs symmetric Q/DQ"
    return None


_FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16"}  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16


def onnx_float_type(path: str | os.PathLike[str]) -> str:
    """The ONNX's compute float type: "fp16"/"bf16" if its float weights use it, else "fp32".

    Counted over initializer elements, so a mixed-precision ONNX from AutoCast with
    fp32 I/O (``keep_io_types``) still reads as fp16. When both low-precision types
    occur, the one with more elements wins.
    """
    model = _load_onnx_structure(path)
    counts = {"fp32": 0, "fp16": 0, "bf16": 0}
    for tensor in model.graph.initializer:
        kind = _FLOAT_TYPES.get(tensor.data_type)
        if kind:
            counts[kind] += int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    if counts["fp16"] or counts["bf16"]:
        return "fp16" if counts["fp16"] >= counts["bf16"] else "bf16"
    return "fp32"


def onnx_input_dims(path: str | os.PathLike[str]) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (initializers excluded) with static dims as ints, dynamic ones as None."""
    model = _load_onnx_structure(path)
    inits = {t.name for t in model.graph.initializer}
    dims: dict[str, tuple[int | None, ...]] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = value.type.tensor_type.shape
        dims[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in shape.dim)
    return dims


def onnx_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 over the ONNX file and every external-data file it references.

    External weights must count: changing them does not change the ``.onnx`` bytes,
    and an engine cached on the ``.onnx`` alone would then be stale.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = [path]
    model = _load_onnx_structure(path)
    locations: set[str] = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    files.extend(path.parent / loc for loc in sorted(locations))
    for file in files:
        digest.update(file.name.encode() + b"\x00")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# --- cache keys ----------------------------------------------------------------------


def _profile_json(profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> dict[str, list[list[int]]]:
    return {name: [list(map(int, s)) for s in shapes] for name, shapes in sorted(profile.items())}


def engine_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: Sequence[int] | str,
    precision: str,
    profile: Mapping[str, tuple[Sequence[int], Sequence[int], Sequence[int]]],
    builder: Mapping[str, Any] | None = None,
) -> str:
    """Key of a serialized engine: everything that decides its bytes.

    Engines are specific to the TensorRT version and the GPU (name + compute
    capability); the ONNX hash, precision and profile decide the network; ``builder``
    holds build settings that change tactics (optimization level, workspace, tf32).
    """
    cc = compute_capability if isinstance(compute_capability, str) else ".".join(str(int(c)) for c in compute_capability)
    return cache.content_key(
        "tensorrt-engine",
        onnx_sha256,
        trt_version,
        gpu_name,
        cc,
        precision,
        _profile_json(profile),
        dict(builder or {}),
    )


def timing_cache_key(trt_version: str, gpu_name: str, compute_capability: Sequence[int] | str) -> str:
    """Key of the builder timing cache, shared by all engines of one TensorRT + GPU."""
    cc = compute_capability if isinstance(compute_capability, str) else ".".join(str(int(c)) for c in compute_capability)
    return cache.content_key("tensorrt-timing", trt_version, gpu_name, cc)


# --- parser errors, dtypes, driver ---------------------------------------------------


def format_parser_errors(parser: Any) -> list[str]:
    """One line per ``trt.OnnxParser`` error: node index, name and operator, then the text.

    Uses ``ParserError.node()/node_name()/node_operator()/desc()/code()``; the name and
    operator accessors are looked up defensively so an older binding still formats.
    """
    lines: list[str] = []
    for index in range(int(parser.num_errors)):
        error = parser.get_error(index)

        def field(attr: str) -> Any:
            getter = getattr(error, attr, None)
            try:
                return getter() if callable(getter) else None
            except Exception:
                return None

        node = field("node")
        name = field("node_name") or ""
        op = field("node_operator") or ""
        desc = " ".join(str(field("desc") or "unknown error").split())
        code = field("code")
        where = "graph"
        if isinstance(node, int) and node >= 0:
            where = f"node {node}"
            detail = ", ".join(x for x in (f"'{name}'" if name else "", op) if x)
            if detail:
                where += f" ({detail})"
        code_text = f" [{getattr(code, 'name', code)}]" if code is not None else ""
        lines.append(f"{where}{code_text}: {desc}")
    return lines


# trt.DataType member name -> torch dtype attribute name
TRT_TO_TORCH_DTYPE = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FP8": "float8_e4m3fn",
}


def torch_dtype_name(trt_dtype: Any) -> str:
    """torch dtype name for a ``trt.DataType`` (or its member name)."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    try:
        return TRT_TO_TORCH_DTYPE[name]
    except KeyError:
        raise Unsupported(f"tensorrt I/O tensor type {name} has no torch equivalent here") from None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- timing --------------------------------------------------------------------------


# --- session -------------------------------------------------------------------------


@dataclass
class _Bound:
    """Device tensors for one loaded batch (inputs copied, outputs allocated)."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]


class TensorRTSession(Session):
    """A deserialized engine with one execution context on one CUDA stream.

    Written against the documented TensorRT 10.x/11.x API; not yet run on a GPU here.
    ``run`` returns the session's output tensors, which the next ``run`` overwrites;
    :meth:`fetch` copies them to host.
    """

    def __init__(self, engine: Any, runtime: Any, device_index: int, plan: PrecisionPlan) -> None:
        import tensorrt as trt
        import torch

        self.device = f"cuda:{device_index}"
        self.plan = plan
        self._torch = torch
        self._runtime = runtime  # the engine must not outlive its runtime
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise HarnessError("tensorrt could not create an execution context (out of device memory?)")
        self._stream = torch.cuda.Stream(device=self.device)
        self.timer = CudaEventTimer(self._stream)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: getattr(torch, torch_dtype_name(engine.get_tensor_dtype(n))) for n in names}
        self._current: _Bound | None = None
        torch.cuda.reset_peak_memory_stats(self.device)

    def load(self, batch: Batch) -> _Bound:
        torch = self._torch
        missing = [n for n in self._inputs if n not in batch]
        if missing:
            raise ConfigError(f"the batch lacks engine input(s) {missing}; it has {sorted(batch)}")
        with torch.cuda.stream(self._stream):
            inputs = {}
            for name in self._inputs:
                array = np.ascontiguousarray(batch[name])
                host = torch.from_numpy(array if array.flags.writeable else array.copy())
                inputs[name] = host.to(self.device, dtype=self._dtypes[name], non_blocking=False).contiguous()
                if not self._context.set_input_shape(name, tuple(inputs[name].shape)):
                    raise ConfigError(
                        f"input '{name}' shape {list(inputs[name].shape)} is outside the engine's optimization profile",
                        "widen backend.min_batch/max_batch/min_seq/max_seq and rebuild",
                    )
            outputs = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise Unsupported(
                        f"output '{name}' has a data-dependent shape {list(shape)}; this backend needs shapes known before run"
                    )
                outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
        self._stream.synchronize()
        bound = _Bound(inputs, outputs)
        self._bind(bound)
        return bound

    def _bind(self, bound: _Bound) -> None:
        """Point the context at ``bound``'s tensors (shapes first, then addresses)."""
        for name, tensor in bound.inputs.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
        for name, tensor in {**bound.inputs, **bound.outputs}.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        self._current = bound

    def run(self, inputs: _Bound) -> dict[str, Any]:
        if inputs is not self._current:
            self._bind(inputs)
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise HarnessError("tensorrt execute_async_v3 failed (see the TensorRT log above)")
        self.timer.mark_done()
        self._stream.synchronize()
        return inputs.outputs

    def fetch(self, outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        torch = self._torch
        self._stream.synchronize()
        host = {}
        for name, tensor in outputs.items():
            if tensor.dtype in (torch.bfloat16, getattr(torch, "float8_e4m3fn", None)):
                tensor = tensor.float()
            host[name] = tensor.cpu().numpy()
        return host

    def memory(self) -> dict[str, float]:
        """Peak torch-allocated MiB (I/O buffers) and device-wide used MiB.

        TensorRT allocates the context's activation memory itself, outside torch's
        allocator, so ``peak_allocated_mib`` covers I/O only; ``device_used_mib``
        (total - free, all processes) bounds the whole footprint from above.
        """
        torch = self._torch
        free, total = torch.cuda.mem_get_info(self.device)
        return {
            "peak_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20,
            "device_used_mib": (total - free) / 2**20,
        }

    def close(self) -> None:
        self._current = None
        self._context = None
        self._engine = None
        self._runtime = None


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

    # -- prepare --------------------------------------------------------------------

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

        Written against the documented TensorRT API; not yet run on a GPU here.
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
        version = str(trt.__version__)
        major = parse_version(version)[0]
        has_qdq = onnx_has_qdq(path)
        plan = precision_plan(precision, version, has_qdq, onnx_float_type(path))
        if plan.convert_to:
            raise Unsupported(plan.note, f"give tensorrt a {plan.convert_to} ONNX (python -m modelopt.onnx.autocast)")
        if has_qdq:
            problem = qdq_problem(path)
            if problem:
                raise Unsupported(problem, "rerun the int8_qdq recipe with symmetric int8 activations and weights")

        meta = artifact.meta
        if "batch_size" not in meta:
            raise ConfigError("artifact meta lacks 'batch_size'; tensorrt needs it for its optimization profile")
        profile = profile_for_onnx(
            onnx_input_dims(path), int(meta["batch_size"]), meta.get("seq_len"), self.options, meta.get("sample_shape")
        )

        index = self.options.device_index
        torch.cuda.set_device(index)
        props = torch.cuda.get_device_properties(index)
        cc = (props.major, props.minor)
        builder_settings = {
            "builder_optimization_level": self.options.builder_optimization_level,
            "workspace_gb": self.options.workspace_gb,
            "tf32": self.options.tf32,
        }
        key = engine_cache_key(
            meta.get("onnx_sha256") or onnx_sha256(path), version, props.name, cc, precision, profile, builder_settings
        )
        engine_path = cache.entry("tensorrt", key) / "engine.plan"
        logger = trt.Logger(trt.Logger.WARNING)
        if engine_path.exists():
            serialized = engine_path.read_bytes()
        else:
            serialized = self._build(trt, logger, path, plan, major, profile, version, props.name, cc)
            _atomic_write(engine_path, serialized)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise HarnessError(f"tensorrt could not deserialize the engine at {engine_path}; delete it to rebuild")
        return TensorRTSession(engine, runtime, index, plan)

    def _build(
        self,
        trt: Any,
        logger: Any,
        path: Path,
        plan: PrecisionPlan,
        major: int,
        profile: Profile,
        version: str,
        gpu_name: str,
        cc: tuple[int, int],
    ) -> bytes:
        """Parse the ONNX and build a serialized engine (documented 10.x/11.x builder API)."""
        builder = trt.Builder(logger)
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        bit = int(strongly_typed) if strongly_typed is not None else 0
        network = builder.create_network(network_flags(plan, major, bit) if strongly_typed is not None else 0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(path)):
            errors = format_parser_errors(parser) or ["no parser error recorded"]
            raise HarnessError(f"tensorrt could not parse {path.name}: " + "; ".join(errors))

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options.workspace_gb * 2**30))
        config.builder_optimization_level = self.options.builder_optimization_level
        if not self.options.tf32 and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        for flag in plan.builder_flags:
            config.set_flag(getattr(trt.BuilderFlag, flag))

        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            trt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(trt_profile)

        timing_path = None
        if self.options.timing_cache:
            timing_path = cache.entry("tensorrt-timing", timing_cache_key(version, gpu_name, cc)) / "timing.cache"
            blob = timing_path.read_bytes() if timing_path.exists() else b""
            config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise HarnessError(f"tensorrt engine build failed for {path.name} (see the TensorRT log above)")
        if timing_path is not None:
            _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)


@hookimpl
def harness_register_backends(registry: "Registry") -> None:
    """Register :class:`TensorRTBackend` under the name ``tensorrt``."""
    registry.add_backend(TensorRTBackend)
