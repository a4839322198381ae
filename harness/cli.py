"""The ``harness`` command: a Hydra app that turns a config into one record per run.

``harness scenario=bert_int8 backend=tensorrt`` (or the card's ``+scenario=...``)
composes ``conf/`` plus the config folders plugins contribute; the command-line check
(:mod:`harness.precheck`) validates every job into a :class:`~harness.compose.Job`
first, so bad input is one line with exit 2 before anything runs. A single run then
runs that job directly; a ``-m`` sweep goes through Hydra (its sweeper and launcher:
basic, joblib, Slurm, Ray...), and each job's task function reuses the job the check
validated. Each run is isolated in its own process (:mod:`harness.launcher`); its
record is written here. A sweep resumes (a job whose ``ok`` record exists is skipped,
:mod:`harness.sweep`) and ends with a summary of every job. ``HARNESS_DEBUG=1`` (or
``HYDRA_FULL_ERROR=1``) shows tracebacks instead of one-line errors. The stage clock
(:mod:`harness.stages`) starts at the process's start; each record gets the stages since
the previous one (``metrics.stages``), shown in one line, or as a table with ``--verbose``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from harness import compose, precheck, stages, sweep, ui
from harness.compose import Job, debug_enabled
from harness.errors import EXIT_CODES, RECORD_FALLBACK_EXIT, ConfigError
from harness.plugins import Plugins, get_plugins

#: How many jobs the running sweep has (set by the CLI, read by each job for "job 3/40").
SWEEP_JOBS_ENV = "HARNESS_SWEEP_JOBS"

#: The jobs the command-line check validated, by override list (this process's sweep).
_CHECKED: dict[tuple[str, ...], Job] = {}
#: ``--verbose`` (or ``HARNESS_VERBOSE=1``): the full stage table after each record, not one line.
VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "HARNESS_VERBOSE"


def _clock() -> stages.StageClock:
    """This process's stage clock (a job run without the CLI's ``main`` starts one)."""
    return stages.active() or stages.start("job")


def run_job(cfg: Any, multirun: bool, num: int, overrides: list[str], job: Optional[Job] = None) -> int:
    """One job: validate ``cfg`` (unless the check already did: ``job``), launch it, write its record.

    Returns the job's exit code; whatever happens is reported as one line and a sweep
    outcome. This is the Hydra task function's body (its return value is what a sweeper
    receives).
    """
    try:
        return _run_job(cfg, multirun, num, overrides, job)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug in the harness itself: still one line, and the sweep goes on
        if debug_enabled():
            raise
        line = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        ui.error(f"internal error: {line} (fix: rerun with HARNESS_DEBUG=1 for the traceback and report it)")
        sweep.report(sweep.Outcome(num, overrides, "failed", 1, reason=f"internal error: {line}"))
        return 1


def _run_job(cfg: Any, multirun: bool, num: int, overrides: list[str], job: Optional[Job]) -> int:
    from harness.launcher import launch

    _clock().switch("job")
    plugins = get_plugins()
    for problem in plugins.problems:
        ui.warning(problem.warning())
    total = os.environ.get(SWEEP_JOBS_ENV)
    prefix = ((f"[{num + 1}/{total}] " if total else "") + f"job {num}: ") if multirun else ""
    if job is None and multirun:
        job = _CHECKED.get(tuple(overrides))
    if job is None:
        try:
            job = compose.validate(cfg, plugins.registry, plugins.config_searchpath())
        except ConfigError as exc:
            ui.error(prefix + exc.one_line())
            sweep.report(sweep.Outcome(num, overrides, "config error", exc.exit_code, reason=exc.one_line()))
            return exc.exit_code
    if multirun:
        job = compose.for_job(job, num, overrides)
    for warning in job.warnings:
        ui.warning(prefix + warning)
    spec = job.spec
    node_rank, nnodes = spec.node
    # The nodes of a multi-node run are one sweep job: node 0 alone reports it there. A
    # single run reports on every node: its outcome is that process's exit status.
    report = sweep.report if node_rank == 0 or not multirun else (lambda outcome: None)
    if multirun and not job.overwrite:
        done = sweep.find_done(spec.results_dir, spec.job.key)
        if done is not None:
            from harness import records

            ui.stage(f"{prefix}skipped: an ok record is already there ({done}); overwrite=true runs it again")
            report(sweep.Outcome.of_record(records.read(done), done, num, overrides, 0, skipped=True))
            return 0

    ui.stage(
        f"{prefix}{spec.scenario_name} ({spec.scenario_kind}) on {spec.backend_name}, model {spec.model.name}"
        + (f" [{' '.join(overrides)}]" if multirun else "")
    )
    out = _Output(job, plugins, num, overrides, prefix, report)
    try:
        record = launch(spec, plugins, job.launcher, status=ui.stage, progress=ui.progress)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep the running job's record, then stop
        ui.end_progress()
        if getattr(exc, "record", None) is not None and node_rank == 0:
            try:
                out.finish(exc.record, exc_code=getattr(exc, "exit_code", 130))  # type: ignore[attr-defined]
            except Exception as failure:  # the record could not be kept anywhere: still stop the sweep
                ui.error(f"{prefix}the interrupted run's record was not written: {failure} (fix: check results_dir and the cache folder can be written)")
        raise
    ui.end_progress()
    if node_rank > 0:  # another node of a multi-node run: node 0 holds global rank 0
        if record["status"] == "ok":  # node 0 writes the run's record and reports it to the sweep
            ui.stage(f"{prefix}done: this node's ranks finished; node 0 of {nnodes} writes the record")
            return 0
        record["reason"] = f"node {node_rank} of {nnodes}: {record['reason']}"  # a failure as this node saw it
    return out.finish(record)


class _Output:
    """One job's record on its way out: written (or saved elsewhere), shown, reported."""

    def __init__(self, job: Job, plugins: Plugins, num: int, overrides: list[str], prefix: str, report: Any) -> None:
        self.job, self.plugins, self.num, self.overrides = job, plugins, num, overrides
        self.prefix, self.report = prefix, report

    def finish(self, record: dict[str, Any], exc_code: int | None = None) -> int:
        """Write ``record``, print it, report the outcome; return the job's exit code
        (``exc_code`` for a run stopped by a signal)."""
        from harness.fallback import write_record

        spec = self.job.spec
        clock = _clock()
        timings = clock.snapshot()  # everything up to the write
        record.setdefault("metrics", {}).update(stages=timings, **stages.summary(timings))
        clock.switch("write")
        path, unsaved = write_record(record, spec.results_dir, spec.cache_dir)
        self.plugins.hook.harness_record_written(record=record, path=str(path))
        ui.out.print(ui.record_table([record]))
        ui.out.print(f"record: {path}", soft_wrap=True)
        shown = {**timings, "write": clock.snapshot().get("write", 0.0)}
        if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
            ui.out.print(ui.stage_table(shown))
        else:
            ui.stage(f"{self.prefix}{stages.one_line(shown)} (--verbose: every stage)")
        clock.restart("sweep")  # the next job of a sweep starts here
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
            ui.error(
                f"{self.prefix}{unsaved}; the measurement is saved at {path} instead "
                f"(fix: free space in or repair {spec.results_dir}, then move the file there)"
            )
            code = max(code, RECORD_FALLBACK_EXIT)
        self.report(sweep.Outcome.of_record(record, path, self.num, self.overrides, code))
        return code


def _hydra_task(cfg: Any) -> int:
    """Hydra's task function: the job Hydra composed, numbered as Hydra says."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun, num = hc.mode == RunMode.MULTIRUN, int(hc.job.num or 0)
    code = run_job(cfg, multirun, num, list(hc.overrides.task))
    if multirun and "tune" in cfg:  # a tuning trial: the sweeper receives the objective its record holds
        from harness import tuning

        return tuning.trial_value(cfg, num)  # type: ignore[return-value]
    return code


def _header(plugins: Plugins) -> str:
    from harness import __version__

    names = ", ".join(f"{p.name} {p.version}" for p in plugins.infos)
    return f"harness {__version__} · plugins: {names}"


def _results_dir(checked: precheck.Checked) -> Optional[str]:
    """``results_dir`` of a sweep (its ledger goes there), from a job the check validated."""
    job = next(iter(checked.jobs.values()), None)
    return str(job.spec.results_dir) if job is not None else None


def _finish(ledger: Path, multirun: bool, expected: int | None, interrupted: BaseException | None) -> int:
    """Read the ledger, remove it, print the sweep summary; return the exit code.

    An interrupted command prints one message (not "N jobs reported no outcome" too:
    the jobs after the signal were never started) and exits ``128 + signal``.
    """
    outcomes = sweep.read_ledger(ledger)
    shutil.rmtree(ledger, ignore_errors=True)
    if ledger.parent.name == ".sweeps":
        with contextlib.suppress(OSError):
            ledger.parent.rmdir()  # once no other sweep uses it
        sweep.prune_sweep_dirs(ledger.parent.parent / ".multirun")  # Hydra's per-job folders, empty here
    code = max((o.exit_code for o in outcomes), default=0)
    if multirun and (outcomes or interrupted):
        ui.out.print(sweep.summary_table(outcomes))
        ui.out.print(sweep.counts_line(outcomes, expected, missing="not started" if interrupted else None), soft_wrap=True)
        if not interrupted and expected is not None and len(outcomes) < expected:
            ui.error(
                f"{expected - len(outcomes)} job(s) reported no outcome (fix: jobs that a launcher runs on "
                f"other machines must see results_dir; check the launcher's logs under the sweep folder)"
            )
            code = max(code, 1)
    if interrupted is not None:
        name = getattr(interrupted, "name", "SIGINT")
        ui.error(f"interrupted by {name}; the records written so far are kept (fix: run the same command again to finish the missing jobs)")
        return int(getattr(interrupted, "exit_code", 130))
    return code


def main() -> None:
    """Console-script entry point."""
    try:
        _main()
    except KeyboardInterrupt as exc:  # a signal outside a job (while checking, or while finishing): one line
        ui.error(f"interrupted by {getattr(exc, 'name', 'SIGINT')} (fix: run the same command again; a -m sweep skips the jobs that already have an ok record)")
        sys.exit(int(getattr(exc, "exit_code", 130)))


def _main() -> None:
    # cli_start: interpreter start and the CLI's imports, from the process's own start time
    clock = stages.start("cli_start", at=stages.process_started())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if debug_enabled():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from harness import interrupts

    interrupts.install()  # SIGTERM (Slurm, CI) ends a sweep like Ctrl-C: summary, records kept
    clock.switch("plugins")
    plugins = get_plugins()
    searchpath = plugins.config_searchpath()
    clock.switch("precheck")
    args = sys.argv[1:]
    if VERBOSE_FLAG in args:  # ours, not Hydra's: taken out before Hydra parses the command line
        args = [arg for arg in args if arg != VERBOSE_FLAG]
        os.environ[VERBOSE_ENV] = "1"
    parsed = precheck.parse_args(args)
    multirun = bool(parsed and parsed.multirun)
    checked = precheck.check(args, searchpath, compose.group_options(searchpath), plugins.registry)
    if checked.problem:
        for issue in plugins.problems:
            ui.warning(issue.warning())
        ui.error(checked.problem)
        sys.exit(2)
    expected = checked.count
    if precheck.runs_jobs(parsed):
        ui.stage(_header(plugins))
        for line in plugins.deprecations:
            ui.warning(line)
        if multirun and expected:
            ui.stage(f"sweep: {expected} job{'s' if expected != 1 else ''}")
            os.environ[SWEEP_JOBS_ENV] = str(expected)
        _CHECKED.update(checked.jobs)
    single = None if multirun or parsed is None else checked.jobs.get(tuple(compose.normalise(list(parsed.overrides))))
    if single is not None and not any(o.lstrip("+~").startswith("hydra") for o in parsed.overrides):  # type: ignore[union-attr]
        # One run: the job the check composed and validated is the run; Hydra has nothing to add.
        ledger = sweep.new_ledger(None)
        try:
            code = run_job(None, False, 0, [], job=single)
        except KeyboardInterrupt as exc:
            sys.exit(_finish(ledger, False, expected, exc))
        sys.exit(max(code, _finish(ledger, False, expected, None)))
    _run_hydra(args, parsed, searchpath, multirun, expected, checked)


def _run_hydra(args: list[str], parsed: Any, searchpath: list[str], multirun: bool, expected: Optional[int], checked: precheck.Checked) -> None:
    """Hand the command line to Hydra's app: sweeps, ``--cfg``, ``--help``, ``hydra.*`` overrides."""
    import hydra

    @hydra.main(version_base="1.3", config_path=f"pkg://{compose.CONFIG_MODULE}", config_name="config")
    def app(cfg: Any) -> int:
        return _hydra_task(cfg)

    extra = compose.searchpath_overrides(searchpath)
    ledger = sweep.new_ledger(_results_dir(checked) if multirun else None)
    interrupted: BaseException | None = None
    try:
        if multirun:  # launchers that run jobs elsewhere (Ray, Slurm) pass the ledger on in the job's env
            extra.append(f"++hydra.job.env_set.{sweep.LEDGER_ENV}={ledger}")
        sys.argv[1:] = compose.normalise(precheck.with_overrides(args, parsed, extra))
        _clock().switch("hydra")  # Hydra's own start (and, per job, its sweeper's composition)
        app()
        from harness import tuning

        tuning.show_studies()  # a tuning sweep: its trials so far and the best configuration
    except KeyboardInterrupt as exc:
        interrupted = exc
    except Exception as exc:  # Hydra refusing the command line itself (e.g. -m with --cfg)
        if debug_enabled():
            raise
        _finish(ledger, multirun, expected, interrupted=None)
        ui.error(f"{compose.one_line(exc)} (fix: harness --help lists the options)")
        sys.exit(2)
    except SystemExit as exc:  # Hydra's --help, or Hydra reporting its own error
        hydra_code = exc.code if isinstance(exc.code, int) else (1 if exc.code else 0)
        sys.exit(max(_finish(ledger, multirun, expected, interrupted=None), hydra_code))
    sys.exit(_finish(ledger, multirun, expected, interrupted))


if __name__ == "__main__":
    main()
