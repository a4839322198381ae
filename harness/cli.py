"""The ``harness`` command: a Hydra app that turns a config into one record per run.

``harness +scenario=bert_int8 backend=tensorrt`` composes ``conf/`` (plus config
folders contributed by plugins), validates it into a RunSpec, runs it in an
isolated process (:mod:`harness.launcher`) and writes the record. ``-m`` sweeps
resume: a job whose ``ok`` record exists is skipped (:mod:`harness.sweep`), and a
summary of every job ends the sweep.

Bad input never reaches Hydra's multi-line errors or a traceback: group choices and
composition are checked first (every job of a sweep too), and each problem is one
line naming the fix, with exit code 2. ``HARNESS_DEBUG=1`` (or ``HYDRA_FULL_ERROR=1``)
shows tracebacks instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

GROUPS = ("backend", "scenario", "model", "dataset")
CONFIG_MODULE = "harness.conf"
#: Most sweep combinations composed up front; beyond it, a covering subset is composed.
MAX_PRECHECK_JOBS = 64
#: Sweeps with more jobs than this are not listed up front (Hydra will list them).
MAX_SWEEP_VALUES = 100_000
#: Largest sweep run without asking; ``HARNESS_MAX_JOBS=<n>`` raises it (a typo such as
#: ``range(1,1000001)`` would otherwise queue a million measurements).
MAX_JOBS = 1000
MAX_JOBS_ENV = "HARNESS_MAX_JOBS"
#: How many jobs the running sweep has (set by the CLI, read by each job for "job 3/40").
SWEEP_JOBS_ENV = "HARNESS_SWEEP_JOBS"


def debug_enabled() -> bool:
    """``HARNESS_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``: show tracebacks instead of one line."""
    return any(os.environ.get(name, "") not in ("", "0") for name in ("HARNESS_DEBUG", "HYDRA_FULL_ERROR"))


def _list_options(entry: str, group: str) -> set[str]:
    """Config names of ``group`` under one Hydra search-path entry (pkg:// or file://)."""
    if entry.startswith("pkg://"):
        try:
            folder = resources.files(entry[len("pkg://"):]).joinpath(group)
        except ModuleNotFoundError:
            return set()
    else:
        folder = Path(entry[len("file://"):] if entry.startswith("file://") else entry) / group
    if not folder.is_dir():
        return set()
    return {item.name[: -len(".yaml")] for item in folder.iterdir() if item.name.endswith(".yaml")}


def group_options(searchpath: list[str]) -> dict[str, list[str]]:
    """Every option of each config group, from the core's conf/ and plugins' folders."""
    entries = [f"pkg://{CONFIG_MODULE}", *searchpath]
    return {g: sorted(set().union(*(_list_options(e, g) for e in entries))) for g in GROUPS}


def _one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines; keep the informative ones, joined."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return "; ".join(ln.rstrip(".") for ln in kept) or type(exc).__name__


def parse_args(args: list[str]) -> argparse.Namespace | None:
    """Hydra's own command-line parse of ``args``; None when Hydra would reject them itself."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return get_args_parser().parse_args(args)
    except (SystemExit, Exception):
        return None


def with_overrides(args: list[str], parsed: argparse.Namespace | None, extra: list[str]) -> list[str]:
    """``args`` with ``extra`` overrides placed beside the user's own.

    Hydra's parser takes overrides as one positional group: an override after an
    option such as ``--cfg job`` that follows the group would be refused.
    """
    if not extra:
        return list(args)
    if parsed is not None and parsed.overrides:
        at = args.index(parsed.overrides[0])
        return [*args[:at], *extra, *args[at:]]
    return [*args, *extra]


def _flat(text: str | None) -> str | None:
    """Collapse whitespace (a value may contain newlines) so a problem is one line."""
    return None if text is None else " ".join(text.split()) or "invalid command line"


def check_group_choices(args: list[str], options: dict[str, list[str]]) -> str | None:
    """Return a one-line problem for an unknown group option in ``args``, else None."""
    return _flat(_group_choice_problem(args, options))


def _group_choice_problem(args: list[str], options: dict[str, list[str]]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None  # composing reports syntax errors as one line
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete() or override.package:
            continue
        if group == "scenario" and not override.is_add():
            value = override.input_line.split("=", 1)[-1]
            return f"scenario must be added with a plus: +scenario={value} (it is not in the defaults list)"
        try:
            if override.value_type is not None and override.value_type.name == "GLOB_CHOICE_SWEEP":
                values = override.value().filter(options[group])
                if not values:
                    return f"{override.input_line} matches no {group}; available: {', '.join(options[group])} (fix: widen the glob)"
            elif override.is_sweep_override():
                if (_sweep_size(override) or 0) > MAX_SWEEP_VALUES:
                    return None  # not a list of names; Hydra will refuse it
                values = [str(v) for v in override.sweep_string_iterator()]
            else:
                values = [override.get_value_element_as_str()]
        except Exception:
            return f"{override.input_line}: a {group} is chosen by name (fix: {group}=<one of: {', '.join(options[group])}>)"
        for value in values:
            if value not in options[group]:
                return f"unknown {group} '{value}'; available: {', '.join(options[group])} (fix: {group}=<one of them>)"
    return None


def _sweep_size(override: Any) -> int | None:
    """How many values a sweep override enumerates, without enumerating a range."""
    import math

    from hydra.core.override_parser.types import RangeSweep

    value = override.value()
    if isinstance(value, RangeSweep):
        if value.start is None or value.stop is None or not value.step:
            return None
        return max(0, math.ceil((value.stop - value.start) / value.step))
    return None


def count_jobs(overrides: list[str], options: dict[str, list[str]] | None = None) -> int | None:
    """How many jobs Hydra's basic sweeper makes of ``overrides``, without listing them
    (a ``range`` is counted, not enumerated); None when it cannot tell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        total = 1
        for override in OverridesParser.create().parse_overrides(overrides):
            if not override.is_sweep_override():
                continue
            if override.value_type is not None and override.value_type.name == "GLOB_CHOICE_SWEEP":
                size = len(override.value().filter((options or {}).get(override.key_or_group, [])))
            else:
                size = _sweep_size(override)
                if size is None:
                    size = len(list(override.sweep_string_iterator()))
            total *= size
        return total
    except Exception:
        return None


def max_jobs() -> int | str:
    """The largest sweep allowed (:data:`MAX_JOBS` or ``$HARNESS_MAX_JOBS``), or a problem line."""
    text = os.environ.get(MAX_JOBS_ENV, "")
    if not text:
        return MAX_JOBS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        return f"{MAX_JOBS_ENV}={text!r} is not a positive number of jobs (fix: export {MAX_JOBS_ENV}=<n>, e.g. 5000)"
    return value


def sweep_jobs(overrides: list[str], options: dict[str, list[str]] | None = None) -> list[list[str]] | str | None:
    """The override list of every job Hydra's basic sweeper will launch, a one-line
    problem, or None for a sweep too large (or too unusual) to list up front; Hydra
    handles those itself. ``glob(...)`` over a config group expands with ``options``."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parser = OverridesParser.create()
        parsed = parser.parse_overrides(overrides)
        expanded = []
        for override in parsed:
            if override.value_type is not None and override.value_type.name == "GLOB_CHOICE_SWEEP":
                names = override.value().filter((options or {}).get(override.key_or_group, []))
                if not names:
                    return None
                override = parser.parse_override(f"{override.get_key_element()}={','.join(names)}")
            expanded.append(override)
        parsed = expanded
        total = 1
        for override in parsed:
            if override.is_sweep_override():
                size = _sweep_size(override)
                total *= size if size is not None else len(override.input_line)
        if total > MAX_SWEEP_VALUES:
            return None
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception as exc:
        return _one_line(exc)


def _covering(jobs: list[list[str]]) -> list[list[str]]:
    """A subset of ``jobs`` in which every value of every swept key appears at least once
    (up to :data:`MAX_PRECHECK_JOBS` values per key)."""
    if len(jobs) <= MAX_PRECHECK_JOBS:
        return jobs
    columns = [list(dict.fromkeys(column)) for column in zip(*jobs)]
    width = min(MAX_PRECHECK_JOBS, max(len(c) for c in columns))
    return [[column[i % len(column)] for column in columns] for i in range(width)]


def validate(cfg: Any, registry: Any) -> tuple[Any, Any, bool, list[str]]:
    """A composed config as the run will see it: (RunSpec, LauncherOptions, overwrite,
    warnings to show).

    Raises :class:`harness.errors.ConfigError` with one line for a wrong type, an
    out-of-range value, an unknown key or scenario kind, or anything the preflight
    checks (:mod:`harness.preflight`) find the run would fail on.
    """
    from harness import preflight
    from harness.config import build_spec, typed
    from harness.launcher import LauncherOptions

    preflight.check_top_level(cfg.keys())
    spec = build_spec(cfg, registry)
    options = typed(LauncherOptions, cfg.get("launcher") or {}, "launcher")
    overwrite = _bool_option(cfg, "overwrite")
    spec, warnings = preflight.run(spec, options.memory_limit_mb, options.host_lock)
    return spec, options, overwrite, warnings


def compose_problems(jobs: list[list[str]], searchpath: list[str], label_jobs: bool = False, registry: Any = None) -> str | None:
    """Compose (and, given the plugin ``registry``, validate) each override list; return
    the first problem as one line.

    Hydra reports composition errors over several lines and, in a sweep, only when
    it reaches the job; checking first lets the CLI print one line with the fix
    before anything runs, instead of failing at job 37 of 40.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from harness.errors import ConfigError

    extra = [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
    try:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for job in jobs:
                prefix = f"job {' '.join(job)}: " if label_jobs else ""
                try:
                    cfg = compose(config_name="config", overrides=[*job, *extra], return_hydra_config=registry is not None)
                except Exception as exc:
                    return prefix + _one_line(exc) + _typo_hint(exc, job, extra)
                if registry is not None:
                    # as in a real run: ${hydra:...} resolves, and the job never sees the hydra node
                    HydraConfig.instance().set_config(cfg)
                    with open_dict(cfg):
                        del cfg["hydra"]
                    try:
                        validate(cfg, registry)
                    except ConfigError as exc:
                        return prefix + exc.one_line()
    except Exception as exc:
        return _one_line(exc)
    finally:
        GlobalHydra.instance().clear()
        if registry is not None:
            HydraConfig.instance().cfg = None  # type: ignore[assignment]
    return None


def _typo_hint(exc: BaseException, job: list[str], extra: list[str]) -> str:
    """`` (fix: did you mean scenario.batch_size?)`` when Hydra could not override a key
    that is a typo of an existing one; composes the job without that override to see
    the keys next to it (inside the caller's ``initialize_config_module``)."""
    import re

    from hydra import compose
    from omegaconf import OmegaConf

    from harness.preflight import nearest

    match = re.search(r"Could not override '([^']+)'", str(exc))
    if match is None:
        return ""
    key = match.group(1)
    rest = [o for o in job if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node: Any = OmegaConf.to_container(compose(config_name="config", overrides=[*rest, *extra]), resolve=False)
        for part in key.split(".")[:-1]:
            node = node[part]
        guess = nearest(key.rsplit(".", 1)[-1], [str(k) for k in node]) if isinstance(node, dict) else None
    except Exception:
        return ""
    return f" (fix: did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{guess}?)" if guess else ""


def compose_problem(args: list[str], searchpath: list[str]) -> str | None:
    """One-line composition problem of a single run's ``args`` (flags ignored), else None."""
    return compose_problems([[a for a in args if not a.startswith("-")]], searchpath)


def _syntax_problem(overrides: list[str]) -> str | None:
    """One line naming the first override Hydra's grammar cannot parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except Exception as exc:
            detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("See ")), "")
            return (
                f"cannot parse override '{override}': {detail} "
                "(fix: check brackets and quotes, e.g. key='a,b' for a string with a comma; "
                "grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)"
            )
    return None


def _sweep_base_problem(overrides: list[str], searchpath: list[str]) -> str | None:
    """Before a sweep, Hydra applies the overrides that are not swept to the config with
    the *default* group choices; a key that only the swept choices have fails there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    problem = compose_problems([base], searchpath)
    if problem is None:
        return None
    return (
        f"{problem} (in a -m sweep, Hydra first applies the overrides that are not swept to the default "
        "config; fix: write ++key=value for a key that only the swept choices have)"
    )


def precheck(args: list[str], searchpath: list[str], options: dict[str, list[str]], registry: Any = None) -> tuple[str | None, int | None]:
    """Check a command line before Hydra runs it: (one-line problem or None, number of jobs).

    ``options`` are the config groups' choices (:func:`group_options`); with the plugin
    ``registry`` every job's values are validated too. Never raises: anything
    unexpected while checking is left for Hydra to report.
    """
    problem, jobs = _precheck(args, searchpath, options, registry)
    return _flat(problem), jobs


def _precheck(args: list[str], searchpath: list[str], options: dict[str, list[str]], registry: Any = None) -> tuple[str | None, int | None]:
    try:
        parsed = parse_args(args)
        if parsed is None or parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion:
            return None, None
        if parsed.config_path or parsed.config_name or parsed.config_dir or parsed.experimental_rerun:
            return None, None
        overrides = list(parsed.overrides)
        problem = _syntax_problem(overrides) or check_group_choices(overrides, options)
        if problem:
            return problem, None
        if not parsed.multirun:
            return compose_problems([overrides], searchpath, registry=registry), 1
        total, limit = count_jobs(overrides, options), max_jobs()
        if isinstance(limit, str):
            return limit, None
        if total is not None and total > limit:
            return (f"this sweep has {total:,} jobs, more than the {limit:,} allowed without asking "
                    f"(fix: narrow the sweep, or export {MAX_JOBS_ENV}={total} to run them all)"), None
        jobs = sweep_jobs(overrides, options)
        if isinstance(jobs, str):
            return jobs, None
        problem = None
        if jobs is not None:
            problem = compose_problems(_covering(jobs), searchpath, label_jobs=len(jobs) > 1, registry=registry)
        if problem is None:
            problem = _sweep_base_problem(overrides, searchpath)
        custom_sweeper = any(o.lstrip("+~").startswith(("hydra/sweeper", "hydra.sweeper")) for o in overrides)
        return problem, None if custom_sweeper or jobs is None else len(jobs)
    except Exception:  # the checker must never be the thing that crashes
        if debug_enabled():
            raise
        return None, None


# --- one job -------------------------------------------------------------------------------


def _job() -> tuple[bool, int, list[str]]:
    """(is this job part of a -m sweep, its number, its overrides) from Hydra's runtime config."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, int(hc.job.num or 0), list(hc.overrides.task)
    except Exception:
        return False, 0, []


def _bool_option(cfg: Any, key: str) -> bool:
    from harness.errors import ConfigError

    value = cfg.get(key, False)
    if isinstance(value, bool) or value is None:
        return bool(value)
    raise ConfigError(f"invalid value for {key}: {value!r} is not true or false", f"{key}=true or {key}=false")


def _run_job(cfg: Any, multirun: bool, num: int, overrides: list[str]) -> int:
    from harness import records, sweep, ui
    from harness.errors import ConfigError
    from harness.launcher import launch
    from harness.plugins import get_plugins

    plugins = get_plugins()
    for problem in plugins.problems:
        ui.warning(problem.warning())
    total = os.environ.get(SWEEP_JOBS_ENV)
    prefix = ((f"[{num + 1}/{total}] " if total else "") + f"job {num}: ") if multirun else ""
    try:
        spec, options, overwrite, warnings = validate(cfg, plugins.registry)
    except ConfigError as exc:
        ui.error(prefix + exc.one_line())
        sweep.report(sweep.Outcome(num, overrides, "config error", exc.exit_code, reason=exc.one_line()))
        return exc.exit_code
    for warning in warnings:
        ui.warning(prefix + warning)

    node_rank, nnodes = spec.node
    # The nodes of a multi-node run are one sweep job: node 0 alone reports it there. A
    # single run reports on every node: its outcome is that process's exit status.
    report = sweep.report if node_rank == 0 or not multirun else (lambda outcome: None)
    key = sweep.job_key(spec.config)
    if multirun and not overwrite:
        done = sweep.find_done(spec.results_dir, key)
        if done is not None:
            ui.stage(f"{prefix}skipped: an ok record is already there ({done}); overwrite=true runs it again")
            report(sweep.Outcome.of_record(records.read(done), done, num, overrides, 0, skipped=True))
            return 0

    ui.stage(f"{prefix}{spec.scenario_name} ({spec.scenario_kind}) on {spec.backend_name}, model {spec.model.name}"
             + (f" [{' '.join(overrides)}]" if multirun else ""))
    job = _Job(spec, plugins, multirun, num, overrides, key, prefix, report)
    try:
        record = launch(spec, plugins, options, status=ui.stage, progress=ui.progress)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep the running job's record, then stop
        ui.end_progress()
        if getattr(exc, "record", None) is not None and node_rank == 0:
            try:
                job.finish(exc.record, exc_code=getattr(exc, "exit_code", 130))  # type: ignore[attr-defined]
            except Exception as failure:  # the record could not be kept anywhere: still stop the sweep
                ui.error(f"{prefix}the interrupted run's record was not written: {failure} "
                         "(fix: check results_dir and the cache folder can be written)")
        raise
    ui.end_progress()
    if node_rank > 0:  # another node of a multi-node run: node 0 holds global rank 0
        if record["status"] == "ok":  # node 0 writes the run's record and reports it to the sweep
            ui.stage(f"{prefix}done: this node's ranks finished; node 0 of {nnodes} writes the record")
            return 0
        record["reason"] = f"node {node_rank} of {nnodes}: {record['reason']}"  # a failure as this node saw it
    return job.finish(record)


class _Job:
    """One job's record on its way out: written (or saved elsewhere), shown, reported."""

    def __init__(self, spec: Any, plugins: Any, multirun: bool, num: int, overrides: list[str], key: str,
                 prefix: str, report: Any) -> None:
        self.spec, self.plugins, self.multirun, self.num = spec, plugins, multirun, num
        self.overrides, self.key, self.prefix, self.report = overrides, key, prefix, report

    def finish(self, record: dict[str, Any], exc_code: int | None = None) -> int:
        """Write ``record``, print it, report the outcome; return the job's exit code
        (``exc_code`` for a run stopped by a signal)."""
        from harness import sweep, ui
        from harness.errors import EXIT_CODES, RECORD_FALLBACK_EXIT, ConfigError
        from harness.fallback import write_record

        record["job_key"] = self.key
        if self.multirun:
            record["job"] = {"num": self.num, "overrides": self.overrides}
        path, unsaved = write_record(record, self.spec.results_dir, self.spec.cache_dir)
        self.plugins.hook.harness_record_written(record=record, path=str(path))
        ui.out.print(ui.record_table([record]))
        ui.out.print(f"record: {path}", soft_wrap=True)
        code = exc_code if exc_code is not None else EXIT_CODES.get(record["status"], 1)
        if record["status"] not in ("ok", "interrupted"):
            error = record.get("error") or {}
            if error.get("type") == "ConfigError":
                code = ConfigError.exit_code
            if debug_enabled():
                for line in [*error.get("traceback", []), *error.get("stderr_tail", [])]:
                    ui.err.print(line, markup=False, highlight=False, soft_wrap=True)
            ui.error(f"{self.prefix}{record['status']}: {record['reason']}")
        if unsaved:
            ui.error(f"{self.prefix}{unsaved}; the measurement is saved at {path} instead "
                     f"(fix: free space in or repair {self.spec.results_dir}, then move the file there)")
            code = max(code, RECORD_FALLBACK_EXIT)
        self.report(sweep.Outcome.of_record(record, path, self.num, self.overrides, code))
        return code


def _run_one(cfg: Any) -> int:
    """Hydra's task function: one job, whatever happens reported as one line and an outcome."""
    from harness import sweep, ui

    multirun, num, overrides = _job()
    try:
        return _run_job(cfg, multirun, num, overrides)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug in the harness itself: still one line, and the sweep goes on
        if debug_enabled():
            raise
        line = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        ui.error(f"internal error: {line} (fix: rerun with HARNESS_DEBUG=1 for the traceback and report it)")
        sweep.report(sweep.Outcome(num, overrides, "failed", 1, reason=f"internal error: {line}"))
        return 1


def _header(plugins: Any) -> str:
    from harness import __version__

    names = ", ".join(f"{p.name} {p.version}" for p in plugins.infos)
    return f"harness {__version__} · plugins: {names}"


def _results_dir(overrides: list[str], searchpath: list[str]) -> str | None:
    """``results_dir`` of a sweep, from its overrides that are not swept (None if unknown)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        base = [o.input_line for o in parsed if not o.is_sweep_override()]
        base += [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return str(compose(config_name="config", overrides=base).results_dir)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()


def _finish(ledger: Path, multirun: bool, expected: int | None, interrupted: BaseException | None) -> int:
    """Read the ledger, remove it, print the sweep summary; return the exit code.

    An interrupted command prints one message (not "N jobs reported no outcome" too:
    the jobs after the signal were never started) and exits ``128 + signal``.
    """
    from harness import sweep, ui

    outcomes = sweep.read_ledger(ledger)
    shutil.rmtree(ledger, ignore_errors=True)
    if ledger.parent.name == ".sweeps":
        with contextlib.suppress(OSError):
            ledger.parent.rmdir()  # once no other sweep uses it
    code = max((o.exit_code for o in outcomes), default=0)
    if multirun and (outcomes or interrupted):
        ui.out.print(sweep.summary_table(outcomes))
        ui.out.print(sweep.counts_line(outcomes, expected, missing="not started" if interrupted else None),
                     soft_wrap=True)
        if not interrupted and expected is not None and len(outcomes) < expected:
            ui.error(
                f"{expected - len(outcomes)} job(s) reported no outcome (fix: jobs that a launcher runs on "
                f"other machines must see results_dir; check the launcher's logs under the sweep folder)"
            )
            code = max(code, 1)
    if interrupted is not None:
        name = getattr(interrupted, "name", "SIGINT")
        ui.error(f"interrupted by {name}; the records written so far are kept "
                 "(fix: run the same command again to finish the missing jobs)")
        return int(getattr(interrupted, "exit_code", 130))
    return code


def main() -> None:
    """Console-script entry point."""
    try:
        _main()
    except KeyboardInterrupt as exc:  # a signal outside a job (while checking, or while finishing): one line
        from harness import ui

        ui.error(f"interrupted by {getattr(exc, 'name', 'SIGINT')} (fix: run the same command again; "
                 "a -m sweep skips the jobs that already have an ok record)")
        sys.exit(int(getattr(exc, "exit_code", 130)))


def _main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if os.environ.get("HARNESS_DEBUG", "") not in ("", "0"):
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from harness import interrupts, sweep, ui
    from harness.plugins import get_plugins

    interrupts.install()  # SIGTERM (Slurm, CI) ends a sweep like Ctrl-C: summary, records kept
    plugins = get_plugins()
    searchpath = plugins.config_searchpath()
    args = sys.argv[1:]
    parsed = parse_args(args)
    multirun = bool(parsed and parsed.multirun)
    problem, expected = precheck(args, searchpath, group_options(searchpath), plugins.registry)
    if problem:
        for issue in plugins.problems:
            ui.warning(issue.warning())
        ui.error(problem)
        sys.exit(2)
    if parsed is not None and not (parsed.help or parsed.hydra_help or parsed.cfg or parsed.info):
        ui.stage(_header(plugins))
        if multirun and expected:
            ui.stage(f"sweep: {expected} job{'s' if expected != 1 else ''}")
            os.environ[SWEEP_JOBS_ENV] = str(expected)
    extra: list[str] = []
    if searchpath:
        extra.append(f"hydra.searchpath=[{','.join(searchpath)}]")

    import hydra

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
    def app(cfg: Any) -> int:
        return _run_one(cfg)

    ledger = sweep.new_ledger(_results_dir(parsed.overrides, searchpath) if multirun and parsed else None)
    interrupted: BaseException | None = None
    try:
        if multirun:  # launchers that run jobs elsewhere (Ray, Slurm) pass the ledger on in the job's env
            extra.append(f"++hydra.job.env_set.{sweep.LEDGER_ENV}={ledger}")
        sys.argv[1:] = with_overrides(args, parsed, extra)
        app()
    except KeyboardInterrupt as exc:
        interrupted = exc
    except Exception as exc:  # Hydra refusing the command line itself (e.g. -m with --cfg)
        if debug_enabled():
            raise
        _finish(ledger, multirun, expected, interrupted=None)
        ui.error(f"{_one_line(exc)} (fix: harness --help lists the options)")
        sys.exit(2)
    except SystemExit as exc:  # Hydra's --help, or Hydra reporting its own error
        hydra_code = exc.code if isinstance(exc.code, int) else (1 if exc.code else 0)
        sys.exit(max(_finish(ledger, multirun, expected, interrupted=None), hydra_code))
    sys.exit(_finish(ledger, multirun, expected, interrupted))


if __name__ == "__main__":
    main()
