"""The runner: one validated RunSpec in, one schema-valid record out.

It resolves the backend and scenario through the plugin registry, probes the
backend, hands a :class:`RunContext` to the scenario and turns whatever happens
(metrics, a :class:`HarnessError`, an unexpected exception) into a record. It never
raises for a run that started: the record carries the status and the reason.

An unexpected exception is a bug somewhere, so its reason names the stage the run
was in and the plugin whose code raised it (found from the traceback), so the
right maintainer gets the report. The full traceback stays in ``error.traceback``.
It runs inside the isolated run process (:mod:`harness.launcher`) by default.
"""

from __future__ import annotations

import resource
import traceback
from dataclasses import asdict, is_dataclass
from functools import partial
from types import TracebackType
from typing import Any, Callable

from harness import hardware, identity, memory, records, stages
from harness.autotrain import first_trainer, needs_auto, resolve_auto
from harness.backend import Backend
from harness.columns import STAGE_COLUMNS
from harness.config import RunSpec
from harness.context import RunContext
from harness.errors import HarnessError, Unavailable
from harness.plugins import Plugins


def _plugin_rows(plugins: Plugins) -> list[dict[str, str]]:
    return [{"name": p.name, "package": p.package, "version": p.version} for p in plugins.infos]


def base_record(spec: RunSpec, plugins: Plugins) -> dict[str, Any]:
    """The record of ``spec``: status ``failed`` and empty metrics, filled in as the run goes.

    The one place a record is assembled: the launcher builds it once (before the run
    process starts, so even a crash has it) and the runner fills it in.
    """
    origin = plugins.registry.plugin_of("backends", spec.backend_name)
    kind = plugins.registry.scenarios.get(spec.scenario_kind)
    backend_cls = plugins.registry.backends.get(spec.backend_name)
    summary = {"precision": "fp32", "batch_size": None, "seq_len": None, **spec.summary}
    record: dict[str, Any] = {
        "schema": records.SCHEMA_ID,
        "run_id": records.new_run_id(),
        "created": records.now_iso(),
        "status": "failed",
        "reason": "",
        "scenario": {"name": spec.scenario_name, "kind": spec.scenario_kind, **summary},
        "backend": {
            "name": spec.backend_name,
            "version": "unknown",
            "device": "unknown",
            "options": asdict(spec.backend_options) if is_dataclass(spec.backend_options) else {},  # type: ignore[arg-type]
            "plugin": asdict(origin) if origin else None,
        },
        "model": {"name": spec.model.name, "params": None, "source": spec.model.path or "config"},
        "hardware": hardware.describe(label=spec.hardware.label),
        "software": hardware.software(),
        "plugins": _plugin_rows(plugins),
        "config": spec.config,
        # Content digests of the config's file paths: reports match models by content, not by path.
        "inputs": identity.portable_inputs(spec.config),
        # The kind's report columns, so a report needs no plugin to show them.
        "columns": [column.as_dict() for column in (*getattr(kind, "report_columns", ()), *getattr(backend_cls, "report_columns", ()), *STAGE_COLUMNS)],
        # The kind's run-local keys, so a report groups rows without the plugin.
        "identity": {"run_local_keys": list(spec.run_local_keys)},
        "metrics": {},
        "job_key": spec.job.key,
    }
    if spec.job.num is not None:
        record["job"] = {"num": spec.job.num, "overrides": list(spec.job.overrides)}
    return record


def _trainer(backend: Backend, plugins: Plugins) -> Backend:
    """The run's backend when it trains, else the first installed one that does."""
    return backend if backend.capabilities().training else first_trainer(plugins.registry)


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


def _plugin_frame(tb: TracebackType | None, plugins: Plugins) -> tuple[str, str] | None:
    """(plugin name, ``module.function``) of the innermost traceback frame in plugin code.

    A plugin's code is its package (the top-level package of the module that
    registered a backend or scenario); for the built-ins inside ``harness`` it is
    just their own module, so a frame in the core is never blamed on a plugin.
    """
    owners: dict[str, str] = {}
    for (table, name), info in plugins.registry.origin.items():
        cls = (plugins.registry.backends if table == "backends" else plugins.registry.scenarios).get(name)
        if cls is not None:
            module = cls.__module__
            owners[module if module.startswith("harness.") else module.split(".")[0]] = info.name
    found = None
    for frame, _ in traceback.walk_tb(tb):
        module = frame.f_globals.get("__name__", "")
        for prefix, plugin in owners.items():
            if module == prefix or module.startswith(prefix + "."):
                found = (plugin, f"{module}.{frame.f_code.co_name}")
    return found


def _failure_reason(exc: BaseException, stage: str, plugins: Plugins) -> str:
    """One line for an unexpected exception: what, in which plugin, during which stage, and the fix."""
    what = _one_line(f"{type(exc).__name__}: {exc}".rstrip(": "), 300)
    where = f" during: {stage}" if stage else ""
    if isinstance(exc, MemoryError):
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        cap = f" under an address-space limit of {limit // 2**20} MiB" if limit != resource.RLIM_INFINITY else ""
        return f"out of memory ({what}){cap}{where} (fix: use a smaller model or batch, or raise launcher.memory_limit_mb if it is set)"
    origin = _plugin_frame(exc.__traceback__, plugins)
    if origin is not None:
        plugin, function = origin
        info = next((p for p in plugins.infos if p.name == plugin), None)
        package = f"{info.package} {info.version}" if info else plugin
        return (
            f"{what} (raised in {function} of plugin '{plugin}'){where} "
            f"(fix: a bug in plugin '{plugin}' ({package}): report it with error.traceback from the record)"
        )
    return f"{what}{where} (fix: error.traceback in the record shows where; HARNESS_DEBUG=1 prints it)"


def execute(
    spec: RunSpec,
    plugins: Plugins,
    status: Callable[[str], None] = print,
    progress: Callable[[str, int, float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    after_probe: Callable[[], None] | None = None,
    record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` and return its record (not yet written).

    ``on_stage`` hears the runner's own stages (probing, starting the backend), which
    are not worth a line on the terminal but name where a crash happened.
    ``after_probe`` is called once the backend is found available, before anything is
    built: the launcher takes the host measurement lock there, so an unavailable
    backend never waits for it. ``record`` is the launcher's :func:`base_record`.

    Stages, in order: probe, backend start, the checkpoint stage (``auto`` trained or
    found, :mod:`harness.autotrain`), the scenario.
    """
    record = record if record is not None else base_record(spec, plugins)
    stage = ""

    def enter(message: str, listener: Callable[[str], None] | None = on_stage) -> None:
        """Remember ``message`` as the stage a crash is reported in, and pass it on to ``listener``."""
        nonlocal stage
        stage = message
        if listener is not None:
            listener(message)

    try:
        plugins.hook.harness_run_start(spec=spec)
        backend_cls = plugins.registry.backend(spec.backend_name)
        enter(f"probing backend '{spec.backend_name}'")
        with stages.timed("probe"):
            availability = backend_cls.probe(spec.backend_options)
        # One source: the probe's version of the library the backend drives (plugin API 1
        # backends still report theirs through version(), read below).
        record["backend"]["version"] = availability.versions.get(spec.backend_name, "unknown")
        if not availability.available:
            raise Unavailable(
                f"backend '{spec.backend_name}' is unavailable: {availability.reason}",
                "run it where that device or library is present, or pick a backend harness-backends lists as available",
            )
        if after_probe is not None:
            with stages.timed("host_lock"):
                after_probe()
        enter(f"starting backend '{spec.backend_name}'")
        with stages.timed("backend_start"):
            backend = backend_cls(spec.backend_options)
            if plugins.legacy("backends", spec.backend_name):
                record["backend"]["version"] = backend.version()
                record["backend"]["device"] = backend.device()
            accelerator = backend.device_info()
        if accelerator:
            record["hardware"] = hardware.describe(accelerator, spec.hardware.label)
        kind = plugins.registry.scenario(spec.scenario_kind)
        scenario = kind(spec.scenario_options)
        say = partial(enter, listener=status)
        trainer = partial(_trainer, backend, plugins)
        ctx = RunContext(spec=spec, backend=backend, status=say, progress=progress, find_trainer=trainer)
        if spec.auto_recipe is not None or needs_auto(spec, kind.checkpoint_options):
            with stages.timed("checkpoint"):
                ctx.auto_checkpoint = resolve_auto(spec, trainer, say)
        enter(f"running scenario '{spec.scenario_name}'")
        try:
            with stages.timed("scenario"):  # what the kind does not label itself
                result = scenario.run(ctx)
        finally:
            with stages.timed("teardown"):
                ctx.close()
    except HarnessError as exc:
        record["status"] = exc.status
        record["reason"] = exc.one_line()
        record["error"] = {"type": type(exc).__name__}
        measured = getattr(exc, "metrics", None)  # what a scenario measured before it failed (e.g. finished requests)
        if isinstance(measured, dict):
            record["metrics"] = measured
        return record
    except (Exception, SystemExit) as exc:  # a bug or a runtime crash: keep the run's record and the trace
        record["status"] = "failed"
        record["reason"] = _failure_reason(exc, stage, plugins)
        record["error"] = {"type": type(exc).__name__, "traceback": traceback.format_exc().splitlines()[-40:]}
        traceback.clear_frames(exc.__traceback__)  # let go of what the failed run held (memory)
        return record
    record["status"] = "ok"
    record["scenario"]["precision"] = result.precision
    record["scenario"]["batch_size"] = result.batch_size
    record["scenario"]["seq_len"] = result.seq_len
    record["model"].update(result.model)
    record["backend"].update(result.backend)
    record["metrics"] = result.metrics
    if result.metrics:
        reused = (record.get("launcher") or {}).get("reuse_worker")  # set by the launcher before the run
        isolation = "worker" if reused else str((spec.config.get("launcher") or {}).get("isolation", "process"))
        memory.add_run_peak(record["metrics"], isolation)
    return record
