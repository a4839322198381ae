"""The runner: one validated RunSpec in, one schema-valid record out.

It resolves the backend and scenario through the plugin registry, probes the
backend, hands a :class:`RunContext` to the scenario and turns whatever happens
(metrics, a :class:`HarnessError`, an unexpected exception) into a record. It never
raises for a run that started: the record carries the status and the reason.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, is_dataclass
from typing import Any, Callable

from harness import hardware, records
from harness.config import RunSpec
from harness.errors import HarnessError, Unavailable
from harness.plugins import Plugins
from harness.scenario import RunContext


def _plugin_rows(plugins: Plugins) -> list[dict[str, str]]:
    return [{"name": p.name, "package": p.package, "version": p.version} for p in plugins.infos]


def _precision_of(spec: RunSpec) -> str:
    return str(getattr(spec.scenario_options, "precision", "fp32"))


def base_record(spec: RunSpec, plugins: Plugins) -> dict[str, Any]:
    """A record for ``spec`` with status ``failed`` and empty metrics, filled in as the run goes."""
    origin = plugins.registry.plugin_of("backends", spec.backend_name)
    opts = spec.scenario_options
    return {
        "schema": records.SCHEMA_ID,
        "run_id": records.new_run_id(),
        "created": records.now_iso(),
        "status": "failed",
        "reason": "",
        "scenario": {
            "name": spec.scenario_name,
            "kind": spec.scenario_kind,
            "precision": _precision_of(spec),
            "batch_size": getattr(opts, "batch_size", None),
            "seq_len": getattr(opts, "seq_len", None),
        },
        "backend": {
            "name": spec.backend_name,
            "version": "unknown",
            "device": "unknown",
            "options": asdict(spec.backend_options) if is_dataclass(spec.backend_options) else {},
            "plugin": asdict(origin) if origin else None,
        },
        "model": {"name": spec.model.name, "params": None, "source": spec.model.path or "config"},
        "hardware": hardware.describe(label=spec.hardware.label),
        "software": hardware.software(),
        "plugins": _plugin_rows(plugins),
        "config": spec.config,
        "metrics": {},
    }


def execute(
    spec: RunSpec,
    plugins: Plugins,
    status: Callable[[str], None] = print,
    progress: Callable[[str, int, float], None] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` and return its record (not yet written)."""
    record = base_record(spec, plugins)
    plugins.hook.harness_run_start(spec=spec)
    try:
        backend_cls = plugins.registry.backend(spec.backend_name)
        availability = backend_cls.probe(spec.backend_options)
        record["backend"]["version"] = availability.versions.get(spec.backend_name, "unknown")
        if not availability.available:
            raise Unavailable(f"backend '{spec.backend_name}' is unavailable: {availability.reason}")
        backend = backend_cls(spec.backend_options)
        record["backend"]["version"] = backend.version()
        record["backend"]["device"] = backend.device()
        accelerator = backend.device_info()
        if accelerator:
            record["hardware"] = hardware.describe(accelerator, spec.hardware.label)
        scenario = plugins.registry.scenario(spec.scenario_kind)(spec.scenario_options)
        ctx = RunContext(spec=spec, backend=backend, status=status, progress=progress)
        result = scenario.run(ctx)
    except HarnessError as exc:
        record["status"] = exc.status
        record["reason"] = exc.one_line()
        return record
    except Exception as exc:  # a bug or a runtime crash: keep the run's record and the trace
        record["status"] = "failed"
        record["reason"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        record["error"] = {"traceback": traceback.format_exc().splitlines()[-30:]}
        return record
    record["status"] = "ok"
    record["scenario"]["precision"] = result.precision
    record["scenario"]["batch_size"] = result.batch_size
    record["scenario"]["seq_len"] = result.seq_len
    record["model"].update(result.model)
    record["backend"].update(result.backend)
    record["metrics"] = result.metrics
    return record
