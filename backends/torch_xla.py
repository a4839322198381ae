"""torch_xla backend: a torch module on an XLA device (a TPU, or the host CPU through PJRT).

XLA tensors are lazy: a forward pass only *traces* a graph, which runs when
``torch_xla.sync()`` cuts it (compiling it first, unless the same graph is in the
cache). So ``run`` does the forward pass and then ``torch_xla.sync(wait=True)``, which
blocks until the device has executed the graph: the call returns after the work is
done (the Session contract) and the host wall clock is the right timer.

Why the record carries more than latency: on XLA the first call of a shape compiles
(seconds) and later calls hit the cache; a graph that changes every call recompiles
every call; an op XLA cannot lower runs on the CPU ("fallback") and forces the graph
to be cut there. :meth:`TorchXLASession.metrics` reports, from
``torch_xla.debug.metrics``, compile time vs execute time, compiles that happened
after the first call (steady-state recompiles) and the ``aten::*`` fallback counters.

Device choice (``backend.device``): ``cpu`` and ``tpu`` select the PJRT device;
``auto`` takes ``PJRT_DEVICE`` from the environment, or a TPU when one is visible.
torch_xla itself would silently fall back to the CPU when neither holds, which would
make a "TPU" number a CPU number; here that is ``unavailable`` with the fix instead.
The PJRT device is process-wide and fixed once the XLA runtime starts, so ``probe``
selects it (sets ``PJRT_DEVICE``) before anything touches a device.

Where this ran: torch_xla 2.9.0 with torch 2.9.0 in ``.venv-xla`` on the CPU PJRT
device (``tests/test_xla.py``). The TPU branches (device selection, memory figures,
TPU fingerprint) follow the torch_xla 2.9 API but have not run on a TPU.

torch_xla 2.9.0 is built against torch 2.9.0 exactly, while the main venv has a newer
torch, hence its own venv (``make .venv-xla``). This module imports torch_xla lazily,
so it loads everywhere and its probe explains what is missing.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice
from harness.errors import Unsupported, exception_line
from harness.hookspecs import hookimpl
from harness.timing import WallClockTimer
from harness.training.torch_session import TorchTrainingSession

if TYPE_CHECKING:
    from harness.registry import Registry

HARNESS_PLUGIN_API = "2"

DEVICES = ("auto", "cpu", "tpu")
MATMUL_PRECISIONS = ("default", "high", "highest")
PJRT_OF = {"cpu": "CPU", "tpu": "TPU"}
#: Max abs logit difference against eager fp32 on the CPU. XLA fuses and reorders
#: float math, so fp32 is close but not bit-equal; bf16 runs under autocast.
TOLERANCE = {"fp32": 1e-3, "bf16": 0.25}

REASON_NOT_INSTALLED = "torch_xla not installed: it needs torch==2.9.0 in its own venv; run `make .venv-xla`"
REASON_NO_PJRT = (
    "PJRT device not configured: PJRT_DEVICE is unset and no TPU is visible (set PJRT_DEVICE=CPU to run XLA on the host CPU, or backend.device=cpu)"
)
REASON_NO_LIBTPU = "backend.device=tpu but libtpu is not installed (pip install 'torch_xla[tpu]' on a TPU VM)"
REASON_NO_TPU_CHIPS = "backend.device=tpu but no TPU chip is visible on this machine (run on a TPU VM)"

#: ``torch_xla.debug.metrics`` timers (nanoseconds) split into compile vs execute.
TIME_METRICS = {"compile": "CompileTime", "execute": "ExecuteTime"}
#: Counters of graph compilations that missed / hit torch_xla's compilation cache.
COMPILE_COUNTERS = {"uncached": "UncachedCompile", "cached": "CachedCompile"}
#: Counters named ``aten::<op>`` count ops that XLA could not lower and ran on the CPU.
FALLBACK_PREFIX = "aten::"


# --- options and device selection (pure, unit-tested without torch_xla) ------------


@dataclass
class TorchXLAOptions:
    """``backend=torch_xla`` options (``conf/backend/torch_xla.yaml``)."""

    device: str = "auto"
    #: XLA's precision for fp32 matmuls/convs. TPUs default to one bf16 pass ("default");
    #: "highest" keeps fp32 meaning fp32, like TF32 being off on CUDA.
    matmul_precision: str = "highest"

    def __post_init__(self) -> None:
        choice(self.device, DEVICES, "device")
        choice(self.matmul_precision, MATMUL_PRECISIONS, "matmul_precision")


def resolve_pjrt_device(requested: str, env_value: Optional[str], libtpu: bool, tpu_chips: int) -> tuple[Optional[str], str]:
    """Decide the PJRT device type for ``backend.device=requested``.

    ``env_value`` is ``PJRT_DEVICE`` as the user set it (read *before* importing
    torch_xla, whose import would default it to CPU). Returns ``(device, "")`` or
    ``(None, reason)``: the reason names the first thing the user has to fix.
    """
    env_kind = env_value.split("_")[0].upper() if env_value else None
    if requested in PJRT_OF:
        wanted = PJRT_OF[requested]
        if env_kind and env_kind != wanted:
            return None, (f"PJRT_DEVICE={env_value} conflicts with backend.device={requested} (unset PJRT_DEVICE, or use backend.device=auto to follow it)")
        if wanted == "TPU":
            if not libtpu:
                return None, REASON_NO_LIBTPU
            if tpu_chips <= 0:
                return None, REASON_NO_TPU_CHIPS
        return wanted, ""
    if env_value:
        return env_value, ""
    if libtpu and tpu_chips > 0:
        return "TPU", ""
    return None, REASON_NO_PJRT


def version_mismatch(torch_version: str, torch_xla_version: str) -> Optional[str]:
    """The reason torch_xla cannot load next to this torch, or None when major.minor match.

    torch_xla wheels are built against one torch release; another one fails at import
    with an undefined-symbol error that does not say what to do.
    """

    def major_minor(text: str) -> tuple[str, ...]:
        return tuple(text.split("+")[0].split(".")[:2])

    if major_minor(torch_version) == major_minor(torch_xla_version):
        return None
    wanted = ".".join(major_minor(torch_xla_version))
    return f"torch_xla {torch_xla_version} needs torch {wanted}.x but torch {torch_version} is installed (run torch_xla from its own venv: `make .venv-xla`)"


# --- torch_xla metrics (the summary is pure; the snapshot reads torch_xla) ---------


@dataclass(frozen=True)
class MetricsSnapshot:
    """Cumulative torch_xla figures at one moment: timers as (samples, total ns), counters."""

    timers: Mapping[str, tuple[int, float]]
    counters: Mapping[str, int]


def take_snapshot() -> MetricsSnapshot:
    """Read the process-wide torch_xla metrics (cheap: a few calls into the runtime)."""
    import torch_xla.debug.metrics as met

    timers = {}
    for name in TIME_METRICS.values():
        data = met.metric_data(name)
        timers[name] = (int(data[0]), float(data[1])) if data else (0, 0.0)
    counters = {name: int(met.counter_value(name) or 0) for name in met.counter_names()}
    return MetricsSnapshot(timers, counters)


def summarize_metrics(start: MetricsSnapshot, first: Optional[MetricsSnapshot], end: MetricsSnapshot, runs: int) -> dict[str, Any]:
    """What a session did on XLA between ``start`` and ``end``, for the record.

    Deltas, because torch_xla's metrics are process-wide and cumulative. ``first`` is
    the snapshot after the first run: compiles after it are steady-state recompiles
    (a graph that changes between calls), which make latency a compile benchmark.
    Times are reported in milliseconds (torch_xla records nanoseconds).
    """
    summary: dict[str, Any] = {"runs": runs}
    for key, name in TIME_METRICS.items():
        count0, total0 = start.timers.get(name, (0, 0.0))
        count1, total1 = end.timers.get(name, (0, 0.0))
        count, total_ms = count1 - count0, (total1 - total0) / 1e6
        summary[key] = {"count": count, "total_ms": total_ms, "mean_ms": total_ms / count if count else None}

    def delta(name: str, since: MetricsSnapshot) -> int:
        return end.counters.get(name, 0) - since.counters.get(name, 0)

    summary["compiles"] = {key: delta(name, start) for key, name in COMPILE_COUNTERS.items()}
    summary["compiles"]["after_first_run"] = delta(COMPILE_COUNTERS["uncached"], first) if first else None
    fallbacks = {name: delta(name, start) for name in end.counters if name.startswith(FALLBACK_PREFIX)}
    summary["cpu_fallback_ops"] = {name: n for name, n in sorted(fallbacks.items()) if n > 0}
    return summary


# --- torch_xla access ----------------------------------------------------------------


def torch_xla_installed() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def import_torch_xla() -> Any:
    """Import torch_xla without letting it pick a PJRT device on its own.

    ``PJRT_SELECT_DEFAULT_DEVICE=0`` stops the import from setting ``PJRT_DEVICE=CPU``
    when it is unset, so :func:`resolve_pjrt_device` (not a silent default) decides.
    """
    os.environ.setdefault("PJRT_SELECT_DEFAULT_DEVICE", "0")
    import torch_xla

    return torch_xla


def _tpu_facts(torch_xla: Any) -> tuple[bool, int]:
    libtpu = bool(getattr(torch_xla, "_found_libtpu", False))
    if not libtpu:
        return False, 0
    try:
        from torch_xla._internal import tpu

        return True, int(tpu.num_available_chips())
    except Exception:  # no PCI view (containers): treat as no chip, the reason says so
        return True, 0


def _xla_autocast(precision: str) -> Any:
    import torch

    if precision == "bf16":
        return torch.autocast("xla", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: Mapping[str, np.ndarray], names: tuple[str, ...], device: Any) -> dict[str, Any]:
    """Copy host arrays to the XLA device and wait, so transfers stay out of timed calls."""
    import torch
    import torch_xla

    tensors = {n: torch.from_numpy(np.ascontiguousarray(batch[n])).to(device) for n in names if n in batch}
    torch_xla.sync(wait=True)
    return tensors


def _memory_figures(device: Any) -> dict[str, float]:
    """Device memory in MiB where the PJRT plugin reports it (TPU does; CPU PJRT does not)."""
    import torch_xla.core.xla_model as xm

    try:
        info = xm.get_memory_info(device)
    except Exception:  # CPU PJRT: "GetAllocatorStats is not supported"
        return {}
    names = {"peak_bytes_used": "peak_mib", "bytes_used": "used_mib", "bytes_limit": "limit_mib"}
    return {name: info[key] / 2**20 for key, name in names.items() if key in info}


# --- sessions ------------------------------------------------------------------------


class RunMetrics:
    """torch_xla metrics over one session's calls: a snapshot at the start and one after the first call."""

    def __init__(self) -> None:
        self.runs = 0
        self._start = take_snapshot()
        self._first: Optional[MetricsSnapshot] = None

    def count(self) -> None:
        """Count a finished call (after ``torch_xla.sync``)."""
        self.runs += 1
        if self._first is None:
            self._first = take_snapshot()

    def record(self) -> dict[str, Any]:
        """The session's ``metrics()``: what it did on XLA since it started."""
        return {"xla": summarize_metrics(self._start, self._first, take_snapshot(), self.runs)}


class TorchXLASession(Session):
    """A torch module on an XLA device; ``run`` returns once the device executed the graph."""

    timer = WallClockTimer()

    def __init__(self, module: Any, device: Any, label: str, output_name: str, precision: str) -> None:
        self.module = module
        self.xla_device = device
        self.device = label
        self.output_name = output_name
        self.precision = precision
        self.input_names = tuple(getattr(module, "input_names", None) or ())
        self.xla_metrics = RunMetrics()

    def load(self, batch: Any) -> dict[str, Any]:
        return _to_device(batch, self.input_names or tuple(batch), self.xla_device)

    def run(self, inputs: dict[str, Any]) -> Any:
        import torch
        import torch_xla

        with torch.no_grad(), _xla_autocast(self.precision):
            output = self.module(**inputs)
        torch_xla.sync(wait=True)
        self.xla_metrics.count()
        return output

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {self.output_name: outputs.detach().cpu().float().numpy()}

    def memory(self) -> dict[str, float]:
        return _memory_figures(self.xla_device)

    def metrics(self) -> dict[str, Any]:
        """Backend-specific figures for the record's ``metrics`` (merged by the scenario)."""
        return self.xla_metrics.record()


class TorchXLATrainingSession(TorchTrainingSession):
    """A module being trained on an XLA device, one ``torch_xla.sync()`` per micro-batch.

    The step, optimizer and LR schedule are the shared torch ones
    (:class:`~harness.training.torch_session.TorchTrainingSession`, as on the pytorch
    backend), so a curve differs between backends only by the device. Each
    ``train_step`` traces forward, backward and (every ``grad_accum_steps``-th call)
    clip + update, then cuts and executes the graph with ``torch_xla.sync(wait=True)``:
    the step is done on the device when it returns and the loss is already device data
    (its copy to the host waits for nothing).
    """

    timer = WallClockTimer()

    def __init__(self, module: Any, plan: Any, device: Any, label: str) -> None:
        import torch
        import torch_xla

        torch.manual_seed(plan.seed)
        torch_xla.manual_seed(plan.seed)  # dropout masks come from XLA's own generator
        self.xla_device = device
        self.device = label
        super().__init__(module, plan, device)
        self.xla_metrics = RunMetrics()

    def load(self, batch: Any) -> dict[str, Any]:
        return _to_device(batch, tuple(batch), self.xla_device)

    def _autocast(self) -> Any:
        return _xla_autocast(self.plan.precision)

    def _sync_device(self) -> None:
        import torch_xla

        torch_xla.sync(wait=True)

    def _finish_step(self) -> None:
        self._sync_device()
        self.xla_metrics.count()

    def memory(self) -> dict[str, float]:
        return _memory_figures(self.xla_device)

    def metrics(self) -> dict[str, Any]:
        """Compile vs execute time and fallbacks over the training steps (see the inference session)."""
        return self.xla_metrics.record()

    def close(self) -> None:
        """Bring the trained module (trained in place) back to host memory.

        Everything after training (evaluation on the CPU, distillation's teacher, saving)
        expects host tensors; an XLA tensor left behind fails there, not here.
        """
        self.module.to("cpu")


# --- the backend -------------------------------------------------------------------


class TorchXLABackend(Backend):
    name = "torch_xla"
    options_type = TorchXLAOptions

    @classmethod
    def probe(cls, options: TorchXLAOptions | None = None) -> Availability:
        options = options if options is not None else TorchXLAOptions()
        if not torch_xla_installed():
            return Availability(False, REASON_NOT_INSTALLED, versions={cls.name: "missing"})
        versions = {cls.name: metadata.version("torch_xla")}
        try:
            versions["torch"] = metadata.version("torch")
        except metadata.PackageNotFoundError:
            return Availability(False, "torch_xla is installed but torch is not (run `make .venv-xla`)", versions=versions)
        mismatch = version_mismatch(versions["torch"], versions[cls.name])
        if mismatch:
            return Availability(False, mismatch, versions=versions)
        env_value = os.environ.get("PJRT_DEVICE")
        try:
            torch_xla = import_torch_xla()
        except Exception as exc:
            return Availability(False, f"torch_xla failed to import ({exception_line(exc, 300)})", versions=versions)
        libtpu, chips = _tpu_facts(torch_xla)
        pjrt, reason = resolve_pjrt_device(options.device, env_value, libtpu, chips)
        if pjrt is None:
            return Availability(False, reason, versions=versions)
        try:
            import torch_xla.runtime as xr

            xr.set_device_type(pjrt)
            devices = tuple(torch_xla.real_devices())
        except Exception as exc:
            return Availability(False, f"PJRT runtime for {pjrt} did not start ({exception_line(exc, 300)})", versions=versions)
        return Availability(True, devices=devices, versions=versions)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            precisions=frozenset(TOLERANCE),
            consumes=("torch",),
            training=True,
            tolerance=dict(TOLERANCE),
        )

    def version(self) -> str:
        return metadata.version("torch_xla")

    def _xla_device(self) -> Any:
        return import_torch_xla().device()

    def device(self) -> str:
        import torch_xla.runtime as xr

        return f"{self._xla_device()} ({xr.device_type()})"

    def device_info(self) -> dict[str, Any]:
        """The accelerator fingerprint on a TPU; empty on CPU PJRT, where the CPU is the device."""
        import torch_xla.runtime as xr

        kind = xr.device_type()
        if kind == "CPU":
            return {}
        info: dict[str, Any] = {"name": kind, "pjrt_device": kind, "count": len(import_torch_xla().real_devices())}
        if kind == "TPU":
            try:
                from torch_xla._internal import tpu

                info["name"] = f"TPU v{tpu.version()}"
            except Exception:  # the generation is a label only; the count still identifies
                pass
        limit = _memory_figures(self._xla_device()).get("limit_mib")
        if limit:
            info["memory_mib"] = int(limit)
        return info

    def _set_matmul_precision(self) -> None:
        """Apply ``matmul_precision`` once; torch_xla logs a warning on every set, which
        is noise here because the option is the user's explicit, recorded choice."""
        import logging

        from torch_xla import backends

        if backends.get_mat_mul_precision() != self.options.matmul_precision:
            log = logging.getLogger("torch_xla.backends")
            level = log.level
            log.setLevel(logging.ERROR)
            try:
                backends.set_mat_mul_precision(self.options.matmul_precision)
            finally:
                log.setLevel(level)

    def prepare(self, artifact: Artifact, precision: str) -> TorchXLASession:
        self.check_precision(precision)
        if artifact.module is None:
            raise Unsupported("the torch_xla backend needs a torch module artifact")
        device = self._xla_device()
        self._set_matmul_precision()
        # A copy: the caller's module stays on the CPU for the eager reference.
        module = copy.deepcopy(artifact.module).to(device).eval()
        return TorchXLASession(module, device, self.device(), artifact.output_names[0], precision)

    def prepare_training(self, module: Any, plan: Any) -> TorchXLATrainingSession:
        """Train ``module`` in place on the XLA device with the plan's optimizer and schedule.

        bf16 is autocast (the XLA way on TPUs); fp16 mixed precision needs a loss scaler
        that XLA devices do not use, so it is refused. One process drives one device:
        data parallelism on XLA (``torch_xla.launch`` / SPMD) is not wired in.
        """
        self.check_precision(plan.precision)
        if plan.world.size > 1:
            raise Unsupported(
                f"torch_xla training runs one process (world size {plan.world.size} requested)",
                "drop scenario.distributed for backend=torch_xla",
            )
        if plan.parallel.activation_checkpointing:
            raise Unsupported(
                "activation checkpointing is not wired for torch_xla (XLA's compiler would fold "
                "torch.utils.checkpoint's recomputation away; torch_xla has its own)",
                "drop scenario.activation_checkpointing for backend=torch_xla",
            )
        device = self._xla_device()
        self._set_matmul_precision()
        return TorchXLATrainingSession(module, plan, device, self.device())


@hookimpl
def harness_register_backends(registry: "Registry") -> None:
    registry.add_backend(TorchXLABackend)
