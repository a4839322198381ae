"""Sweep bookkeeping: stable job keys, resuming, and the end-of-sweep summary.

A 40-job sweep interrupted at job 23 (a reboot, a Ctrl-C, a killed session) must
not redo 22 measurements. Each record therefore carries a ``job_key``: a hash of
the resolved config without the keys that do not change what is measured (where
results and caches go, the launcher's limits, ``overwrite``). Re-running the same
``-m`` command skips every job whose ``ok`` record with that key is already in
``results_dir``; failed, timed-out and missing jobs run again. ``overwrite=true``
runs everything. Single runs (no ``-m``) always measure: running twice on purpose
is how one checks run-to-run noise.

Jobs may run in other processes (Hydra's joblib launcher), so each job reports its
outcome as a small JSON file in a ledger folder the CLI creates (its path travels
in ``$HARNESS_SWEEP_LEDGER``); the CLI reads the ledger for the exit code and the
summary table once Hydra returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from harness.identity import job_key as job_key  # the key a sweep resumes by

LEDGER_ENV = "HARNESS_SWEEP_LEDGER"


#: (path) -> (mtime_ns, size, job_key, status): each record file is read once per process.
_INDEX: dict[Path, tuple[int, int, Optional[str], Optional[str]]] = {}


def _indexed(path: Path) -> tuple[Optional[str], Optional[str]]:
    """(job_key, status) of the record at ``path``; (None, None) for anything unreadable."""
    try:
        stat = path.stat()
    except OSError:
        return None, None
    cached = _INDEX.get(path)
    if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
        return cached[2], cached[3]
    key = status = None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict):
            key, status = record.get("job_key"), record.get("status")
    except (OSError, ValueError):
        pass
    _INDEX[path] = (stat.st_mtime_ns, stat.st_size, key, status)
    return key, status


def find_done(results_dir: str | os.PathLike[str], key: str) -> Optional[Path]:
    """The first ``ok`` record with ``job_key == key`` in ``results_dir``, if any.

    A sweep asks once per job; record files (which can hold many raw samples) are read
    once per process and remembered by modification time. Unreadable files are ignored.
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        if _indexed(path) == (key, "ok"):
            return path
    return None


@dataclass
class Outcome:
    """What one job ended with, as the summary shows it."""

    num: int
    overrides: list[str]
    status: str
    exit_code: int
    skipped: bool = False
    record: Optional[str] = None
    backend: str = ""
    scenario: str = ""
    p50_ms: Optional[float] = None
    reason: str = ""

    @classmethod
    def of_record(cls, record: dict[str, Any], path: Path | str, num: int, overrides: list[str], exit_code: int, skipped: bool = False) -> "Outcome":
        latency = (record.get("metrics") or {}).get("latency_ms") or {}
        return cls(
            num=num,
            overrides=overrides,
            status=record["status"],
            exit_code=exit_code,
            skipped=skipped,
            record=str(path),
            backend=record["backend"]["name"],
            scenario=record["scenario"]["name"],
            p50_ms=latency.get("p50"),
            reason=record.get("reason", ""),
        )


#: The file Hydra's sweeper saves in its sweep folder (the sweep's own config).
HYDRA_SWEEP_CONFIG = "multirun.yaml"


def new_ledger(results_dir: str | os.PathLike[str] | None = None) -> Path:
    """Create a ledger folder and publish it to jobs through :data:`LEDGER_ENV`.

    For a sweep it lives under ``<results_dir>/.sweeps/`` (hidden from reports), so
    jobs that a launcher runs on other machines can report too whenever they see the
    same results folder, which cluster sweeps need anyway for their records.
    """
    folder = None
    if results_dir is not None:
        try:
            root = Path(results_dir).expanduser().resolve() / ".sweeps"
            root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="sweep-", dir=root))
        except OSError:
            folder = None
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="harness-sweep-"))
    os.environ[LEDGER_ENV] = str(folder)
    return folder


def report(outcome: Outcome) -> None:
    """Add a job's outcome to the ledger (atomically; jobs may run concurrently).

    A ledger that cannot take it (the disk filled up) costs only this summary row, with
    a warning; the job's record is already written."""
    folder = os.environ.get(LEDGER_ENV)
    if not folder or not Path(folder).is_dir():
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(outcome), handle)
        os.replace(tmp, Path(folder) / f"{outcome.num:06d}-{os.getpid()}-{Path(tmp).stem[5:]}.json")
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        from harness import ui

        ui.warning(f"job {outcome.num} is missing from the sweep summary: the ledger {folder} refused it ({exc.strerror or exc})")


def prune_sweep_dirs(root: Path) -> None:
    """Remove Hydra's sweep folders under ``root`` that hold nothing of use, deepest first.

    Hydra makes ``.multirun/<time>/`` with its ``multirun.yaml`` and one empty folder per
    job, although the harness writes nothing there (records land in ``results_dir`` and
    carry the resolved config); left behind they pile up one per sweep. A folder that
    holds anything else (submitit's Slurm scripts and logs, another running sweep's
    files) stays, with its ``multirun.yaml``.
    """
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: entry[0].count(os.sep), reverse=True):
        with contextlib.suppress(OSError):
            if os.listdir(folder) == [HYDRA_SWEEP_CONFIG]:
                os.unlink(os.path.join(folder, HYDRA_SWEEP_CONFIG))
            os.rmdir(folder)


def read_ledger(folder: Path) -> list[Outcome]:
    outcomes = []
    for path in sorted(folder.glob("[0-9]*.json")):
        try:
            outcomes.append(Outcome(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(outcomes, key=lambda o: o.num)


def counts_line(outcomes: Iterable[Outcome], expected: Optional[int] = None, missing: Optional[str] = None) -> str:
    """``sweep: 5 jobs: 3 ok (1 skipped, already done), 1 failed, 1 timeout``.

    Jobs short of ``expected`` are counted as ``missing`` says (default "ended without a
    result"; "not started" after an interrupt)."""
    outcomes = list(outcomes)
    counts = Counter(o.status for o in outcomes)
    skipped = sum(o.skipped for o in outcomes)
    parts = []
    for status, count in sorted(counts.items(), key=lambda kv: (kv[0] != "ok", kv[0])):
        text = f"{count} {status}"
        if status == "ok" and skipped:
            text += f" ({skipped} skipped: ok record already there)"
        parts.append(text)
    short = (expected or 0) - len(outcomes)
    if short > 0:
        parts.append(f"{short} {missing or 'ended without a result'}")
    total = max(len(outcomes), expected or 0)
    return f"sweep: {total} job{'s' if total != 1 else ''}: " + (", ".join(parts) or "none ran")


def summary_table(outcomes: list[Outcome]) -> Any:
    """One row per job: number, status, backend, scenario, p50, overrides, reason or record.

    Overrides shared by every job go in the title once; rows show what differs.
    """
    from rich.markup import escape
    from rich.table import Table

    common = set.intersection(*(set(o.overrides) for o in outcomes)) if len(outcomes) > 1 else set()
    title = "sweep summary" + (f" (every job: {escape(' '.join(sorted(common)))})" if common else "")
    table = Table(title=title, title_justify="left")
    for column in ("job", "status", "backend", "scenario", "p50 ms", "overrides", "reason / record"):
        table.add_column(column, justify="right" if column in ("job", "p50 ms") else "left", overflow="fold")
    for o in outcomes:
        colour = "green" if o.status == "ok" else "red"
        label = f"{o.status} (skipped)" if o.skipped else o.status
        detail = o.reason if o.status != "ok" else (o.record or "")
        table.add_row(
            str(o.num),
            f"[{colour}]{escape(label)}[/]",
            escape(o.backend),
            escape(o.scenario),
            "-" if o.p50_ms is None else f"{o.p50_ms:,.3f}",
            escape(" ".join(x for x in o.overrides if x not in common)),
            escape(detail[:300]),
        )
    return table
