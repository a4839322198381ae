"""The Markdown report: tables via pandas/tabulate, figures as PNG files beside it.

Every string that came from a record (model names, labels, reasons, paths) is made
inert before it reaches Markdown: ``& < >`` become HTML entities (no tag, no autolink),
and the characters that open Markdown constructs (``[ ] ` * _ ~ | \\``) are
backslash-escaped, so ``[click](http://evil)`` in a model name shows as that text
instead of a link, a backtick cannot open a code span, ``<img src=x>`` stays text and
a pipe cannot split a table cell. Newlines become spaces.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from harness.report.build import Report

PLOTS_DIR = "plots"


_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def cell(value: object) -> str:
    """Record text made inert in Markdown (see the module doc)."""
    text = " ".join(html.escape(str(value), quote=False).splitlines())
    return _SPECIAL.sub(r"\\\1", text)


def _table(frame: pd.DataFrame) -> str:
    safe = frame.map(cell)
    safe.columns = [cell(column) for column in frame.columns]
    return safe.to_markdown(index=False, disable_numparse=True)


def render(report: Report, plots_dir: str = PLOTS_DIR) -> str:
    """Markdown text; figures are referenced as ``<plots_dir>/<name>.png``."""
    lines = [f"# {cell(report.title)}", ""]
    lines.append(f"Generated {report.generated} from {report.record_count} record(s) in: " + ", ".join(cell(p) for p in report.inputs))
    if report.baseline:
        lines.append(f"\nSpeedup is throughput relative to the baseline {cell(report.baseline)} (same model and workload; same machine when it has one).")
    lines += [f"\n> {cell(note)}" for note in report.notes]
    if not report.machines.empty:
        lines += ["", "## Machines", "", _table(report.machines)]
    if not report.overview.empty:
        lines += ["", "## Throughput by machine (samples/s, median)", "", _table(report.overview)]
    for section in report.sections:
        lines += ["", f"## {cell(section.title)}", "", _table(section.table)]
        lines += [f"\n![{cell(figure.title)}]({plots_dir}/{figure.name}.png)" for figure in section.figures]
    if report.accuracy:
        lines += ["", "## Accuracy vs throughput", ""]
        lines += [f"![{cell(figure.title)}]({plots_dir}/{figure.name}.png)\n" for figure in report.accuracy]
    for serving in report.serving:
        lines += ["", f"## {cell(serving.title)}", "", _table(serving.table)]
        lines += [f"\n![{cell(figure.title)}]({plots_dir}/{figure.name}.png)" for figure in serving.figures]
    if report.training:
        lines += ["", "## Training", ""]
        lines += [f"![{cell(figure.title)}]({plots_dir}/{figure.name}.png)\n" for figure in report.training]
    for study in report.tuning:
        lines += ["", f"## Tuning: {cell(study.name)}", "", cell(study.headline), "", f"**{cell(study.best)}**", "", _table(study.table)]
        if not study.importance.empty:
            lines += ["", _table(study.importance)]
        lines += [f"\n![{cell(figure.title)}]({plots_dir}/{figure.name}.png)" for figure in study.figures]
    if report.generation:
        lines += ["", "## Generation", ""]
        lines += [f"![{cell(figure.title)}]({plots_dir}/{figure.name}.png)\n" for figure in report.generation]
    if not report.problems.empty:
        lines += ["", "## Runs without a valid measurement", "", _table(report.problems)]
    if report.skipped:
        lines += ["", "## Skipped files", ""] + [f"- {cell(item)}" for item in report.skipped]
    return "\n".join(lines) + "\n"


def write(report: Report, out_dir: Path, name: str = "report.md") -> list[Path]:
    """Write the Markdown file and its PNG figures; return every path written."""
    plots = out_dir / PLOTS_DIR
    written = []
    figures = [figure for section in [*report.sections, *report.serving] for figure in section.figures]
    figures += report.accuracy + report.training
    figures += [figure for study in report.tuning for figure in study.figures]
    figures += report.generation
    if figures:
        plots.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        path = plots / f"{figure.name}.png"
        path.write_bytes(figure.png)
        written.append(path)
    target = out_dir / name
    target.write_text(render(report), encoding="utf-8")
    return [target, *written]
