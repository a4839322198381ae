"""Terminal output: the plugin header, stage messages, progress and the result table.

Results go to stdout; stage messages and progress go to stderr so a pipe of stdout
stays clean. Progress is redrawn only when the measurement loop reports (no
background refresh thread competing for the cores being measured).
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.columns import format_value, from_record
from harness.identity import get

# Piped output gets a wide console so tables are not truncated to 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """One-line error on stderr, the way every user-facing failure is reported."""
    err.print(f"[bold red]harness: error:[/] {escape(message)}", soft_wrap=True)


def warning(message: str) -> None:
    err.print(f"[yellow]harness: {escape(message)}[/]", soft_wrap=True)


def stage(message: str) -> None:
    err.print(f"[dim]· {escape(message)}[/]", soft_wrap=True)


def progress(label: str, count: int, elapsed_s: float) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  {label}: {count} calls, {elapsed_s:.1f} s ")
        sys.stderr.flush()


def end_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _peak_mib(metrics: dict[str, Any]) -> Any:
    """The device peak where the backend measured one (CUDA), else the run's peak RSS."""
    figures = metrics.get("memory_mib") or {}
    if not isinstance(figures, dict):
        return None
    return figures.get("peak_allocated_mib", figures.get("peak_rss_mib"))


def record_table(records: list[dict[str, Any]]) -> Table:
    """The summary table: one row per record, plus the columns its scenario kind declares.

    A declared column (``record["columns"]``, see :mod:`harness.columns`) appears when
    some record fills it; columns that need another run to compare with (``vs``) are
    left to ``harness-report``.
    """
    declared: dict[tuple[str, str], Any] = {}
    for rec in records:
        for column in from_record(rec):
            if not column.derived and any(get(r, column.key) is not None for r in records):
                declared.setdefault((column.key, column.label), column)
    fixed = ("status", "backend", "scenario", "precision", "batch", "p50 ms", "p99 ms", "samples/s", "accuracy", "peak MiB", "MFU")
    rows = [[*_fixed_cells(rec), *(escape(format_value(get(rec, column.key), column.format) or "-") for column in declared.values())] for rec in records]
    names = [*fixed, *(escape(column.label) for column in declared.values())]
    names[fixed.index("accuracy")] = _accuracy_label(records)
    texts = {"status", "backend", "scenario", "precision"} | {escape(c.label) for c in declared.values() if c.format == "text"}
    # A fixed figure no record has (latency and MFU of a generation run) is left out, not shown as "-".
    keep = [i for i, name in enumerate(names) if i < 4 or i >= len(fixed) or any(row[i] != "-" for row in rows)]
    table = Table(title="harness results", title_justify="left")
    for i in keep:
        table.add_column(names[i], justify="left" if names[i] in texts else "right")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def _fixed_cells(rec: dict[str, Any]) -> list[str]:
    """The cells of the columns every record has (status ... MFU)."""
    metrics = rec.get("metrics") or {}
    latency = metrics.get("latency_ms") or {}
    throughput = metrics.get("throughput") or {}
    accuracy = (metrics.get("accuracy") or {}).get("value")
    colour = "green" if rec["status"] == "ok" else "red"
    mfu = metrics.get("mfu")
    return [
        f"[{colour}]{escape(rec['status'])}[/]",
        escape(rec["backend"]["name"]),
        escape(rec["scenario"]["name"]),
        escape(rec["scenario"]["precision"]),
        _fmt(rec["scenario"].get("batch_size")),
        _fmt(latency.get("p50"), 3),
        _fmt(latency.get("p99"), 3),
        _fmt(throughput.get("samples_per_s"), 1),
        _fmt(accuracy, 4),
        _fmt(_peak_mib(metrics), 0),
        "-" if mfu is None else f"{mfu:.1%}",
    ]


def _accuracy_label(records: list[dict[str, Any]]) -> str:
    """``accuracy``, or the metric every scored record names when that is another one
    (a decoder's perplexity is not an accuracy: lower is better)."""
    metrics = {
        ((r.get("metrics") or {}).get("accuracy") or {}).get("metric")
        for r in records
        if ((r.get("metrics") or {}).get("accuracy") or {}).get("value") is not None
    }
    return str(metrics.pop()) if len(metrics) == 1 and None not in metrics and "accuracy" not in metrics else "accuracy"


def stage_table(durations: dict[str, float]) -> Table:
    """Every stage of a run in the order it began, with its seconds and share of the total."""
    total = sum(durations.values()) or 1.0
    table = Table(title="where the time went (metrics.stages)", title_justify="left")
    for name in ("stage", "seconds", "share"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for name, seconds in durations.items():
        table.add_row(escape(name), f"{seconds:.3f}", f"{seconds / total:.1%}")
    table.add_row("[bold]total[/]", f"{sum(durations.values()):.3f}", "")
    return table
