"""The HTML report: one self-contained file that opens offline.

CSS is inline, figures are base64 PNG ``data:`` URIs, there is no JavaScript and no
external URL, so the file can be mailed or attached to a ticket as is. Every string
that came from a record is passed through ``html.escape`` (tables through pandas'
``to_html(escape=True)``), so a machine labelled ``<script>`` shows as text.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

import pandas as pd

from harness.report.build import Plot, Report

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1400px; padding: 0 1rem; color: #1f2328; background: #fff; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
.meta { color: #57606a; } .note { background: #fff8c5; padding: .4rem .8rem; border-left: 4px solid #d4a72c; }
table { border-collapse: collapse; margin: .8rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #d8dee4; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tbody tr:nth-child(even) { background: #fafbfc; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .85rem; }
.problems td:first-child { font-weight: 600; color: #cf222e; }
code { background: #f6f8fa; padding: 0 .25rem; border-radius: 3px; }
"""


def _table(frame: pd.DataFrame, css_class: str = "") -> str:
    return frame.to_html(index=False, escape=True, border=0, classes=css_class or None, na_rep="")


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    title = escape(plot.title)
    return f'<figure><img alt="{title}" src="data:image/png;base64,{data}"><figcaption>{title}</figcaption></figure>'


def _figures(plots: list[Plot]) -> str:
    return f'<div class="figures">{"".join(_figure(plot) for plot in plots)}</div>' if plots else ""


def render(report: Report) -> str:
    """The complete HTML document as a string."""
    inputs = ", ".join(f"<code>{escape(path)}</code>" for path in report.inputs)
    body = [
        f"<h1>{escape(report.title)}</h1>",
        f'<p class="meta">Generated {escape(report.generated)} from {report.record_count} record(s) in {inputs}.</p>',
    ]
    if report.baseline:
        body.append(
            f'<p class="meta">Speedup is throughput relative to the baseline <code>{escape(report.baseline)}</code> '
            "(same model and workload; same machine when it has one, else the machine named in brackets).</p>"
        )
    body += [f'<p class="note">{escape(note)}</p>' for note in report.notes]
    if not report.machines.empty:
        body += ["<h2>Machines</h2>", _table(report.machines)]
    if not report.overview.empty:
        body += ["<h2>Throughput by machine (samples/s, median)</h2>", _table(report.overview)]
    for section in report.sections:
        body += [f"<h2>{escape(section.title)}</h2>", _table(section.table), _figures(section.figures)]
    if report.accuracy:
        body += ["<h2>Accuracy vs throughput</h2>", _figures(report.accuracy)]
    for serving in report.serving:
        body += [f"<h2>{escape(serving.title)}</h2>", _table(serving.table), _figures(serving.figures)]
    if report.training:
        body += ["<h2>Training</h2>", _figures(report.training)]
    for study in report.tuning:
        body += [
            f"<h2>Tuning: {escape(study.name)}</h2>",
            f'<p class="meta">{escape(study.headline)}</p>',
            f"<p><strong>{escape(study.best)}</strong></p>",
            _table(study.table),
        ]
        if not study.importance.empty:
            body.append(_table(study.importance))
        body.append(_figures(study.figures))
    if report.generation:
        body += ["<h2>Generation</h2>", _figures(report.generation)]
    if not report.problems.empty:
        body += ["<h2>Runs without a valid measurement</h2>", _table(report.problems, "problems")]
    if report.skipped:
        items = "".join(f"<li>{escape(item)}</li>" for item in report.skipped)
        body += ["<h2>Skipped files</h2>", f"<ul>{items}</ul>"]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def write(report: Report, out_dir: Path, name: str = "report.html") -> list[Path]:
    target = out_dir / name
    target.write_text(render(report), encoding="utf-8")
    return [target]
