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
    table = Table(title="harness results", title_justify="left")
    fixed = ("status", "backend", "scenario", "precision", "batch", "p50 ms", "p99 ms", "samples/s", "accuracy", "peak MiB", "MFU")
    for name in fixed:
        table.add_column(name, justify="left" if name in fixed[:4] else "right")
    for column in declared.values():
        table.add_column(escape(column.label), justify="left" if column.format == "text" else "right")
    for rec in records:
        metrics = rec.get("metrics") or {}
        latency = metrics.get("latency_ms") or {}
        throughput = metrics.get("throughput") or {}
        accuracy = (metrics.get("accuracy") or {}).get("value")
        status = rec["status"]
        colour = "green" if status == "ok" else "red"
        mfu = metrics.get("mfu")
        table.add_row(
            f"[{colour}]{escape(status)}[/]",
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
            *(escape(format_value(get(rec, column.key), column.format) or "-") for column in declared.values()),
        )
    return table


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
