"""Rich terminal summary: the tables of a report, without the figures."""

from __future__ import annotations

import re

import pandas as pd
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.report.build import Report

_NUMBER = re.compile(r"[\d,.\-+%×()– ]+(?: s)?(?: \(baseline\)| \(vs .*\))?")


def _numeric(values: pd.Series) -> bool:
    """True when every non-empty cell reads as a number (``1,234``, ``5.0%``, ``1.80×``, ``12 (10–14)``)."""
    cells = [str(value) for value in values if str(value)]
    return bool(cells) and all(_NUMBER.fullmatch(cell) for cell in cells)


def rich_table(frame: pd.DataFrame, title: str | None = None) -> Table:
    """A rich Table of a display frame; cells are escaped so ``[bold]`` in a label stays text."""
    table = Table(title=escape(title) if title else None, box=box.SIMPLE_HEAVY, title_justify="left")
    for column in frame.columns:
        numeric = _numeric(frame[column])
        longest = max((len(str(value)) for value in frame[column]), default=0)
        # Numbers are never split (their headers wrap instead); names keep up to 12 characters on a line.
        width = longest if numeric else min(longest, 12)
        table.add_column(escape(str(column)), justify="right" if numeric else "left", overflow="fold", min_width=width)
    for row in frame.itertuples(index=False):
        table.add_row(*(escape(str(value)) for value in row))
    return table


def show(report: Report, console: Console | None = None) -> None:
    """Print the report's tables, problems and skipped files to the terminal."""
    console = console or Console()
    console.rule(f"[bold]{escape(report.title)}")
    baseline = f", speedup vs [cyan]{escape(report.baseline)}[/]" if report.baseline else ""
    console.print(f"{report.record_count} record(s) from {len(report.inputs)} path(s){baseline}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    if not report.machines.empty:
        console.print(rich_table(report.machines, "Machines"))
    for section in report.sections:
        console.print(rich_table(section.table, section.title))
    if not report.problems.empty:
        console.print(rich_table(report.problems, "Runs without a valid measurement"))
    for skipped in report.skipped:
        console.print(f"[red]skipped[/] {escape(skipped)}")
