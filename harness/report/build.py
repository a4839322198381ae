"""Assemble a report once (tables as strings, figures as PNG bytes) for every renderer.

The terminal, Markdown and HTML writers receive a finished :class:`Report` and only
lay it out, so the three can never disagree about a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness import results
from harness.report import plots, tables
from harness.report import summary as s

SAMPLES = "metrics.latency_ms.samples"
LOSS_CURVE = "metrics.training.loss_curve"


@dataclass(frozen=True)
class Plot:
    """A rendered plot: ``name`` is a file stem unique within the report."""

    name: str
    title: str
    png: bytes


@dataclass
class Section:
    """One model × scenario: its comparison table and figures."""

    model: str
    scenario: str
    table: pd.DataFrame
    figures: list[Plot] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.model} · {self.scenario}"


@dataclass
class Report:
    """Everything a renderer shows; record-derived strings are still unescaped."""

    title: str
    generated: str
    inputs: list[str]
    record_count: int
    baseline: str | None
    machines: pd.DataFrame
    overview: pd.DataFrame
    sections: list[Section]
    accuracy: list[Plot]
    training: list[Plot]
    problems: pd.DataFrame
    skipped: list[str]
    notes: list[str]


def build(
    frame: pd.DataFrame,
    *,
    baseline: Mapping[str, str] | None = None,
    baseline_text: str | None = None,
    title: str = "harness benchmark report",
    inputs: Sequence[str] = (),
    skipped: Sequence[object] = (),
) -> Report:
    """Summarise ``frame`` (from :func:`harness.results.load`) into a :class:`Report`."""
    ok = frame[frame["status"] == "ok"]
    summary = s.aggregate_repeats(ok) if not ok.empty else pd.DataFrame(columns=[*s.CONFIG_KEYS, "runs"])
    notes: list[str] = []
    if baseline and not summary.empty:
        summary = s.speedup_vs_baseline(summary, baseline)
        if not summary["baseline"].any():
            notes.append(f"No successful run matches the baseline {baseline_text or dict(baseline)}; no speedups shown.")
    colors = plots.machine_colors(frame["machine"].dropna().astype(str))
    names = _Names()
    return Report(
        title=title,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        inputs=list(inputs),
        record_count=len(frame),
        baseline=baseline_text,
        machines=tables.machines_table(frame),
        overview=tables.throughput_matrix(summary),
        sections=_sections(ok, summary, colors, names),
        accuracy=_accuracy_figures(summary, colors, names),
        training=_training_figures(ok, names),
        problems=tables.problems_table(frame),
        skipped=[str(item) for item in skipped],
        notes=notes,
    )


class _Names:
    """Unique, file-system-safe figure names."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, *parts: object) -> str:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(map(str, parts))).strip("-.")[:80] or "figure"
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}"
        self.used.add(name)
        return name


def _sections(ok: pd.DataFrame, summary: pd.DataFrame, colors: Mapping[str, object], names: _Names) -> list[Section]:
    if summary.empty:
        return []
    samples = results.raw(ok, SAMPLES)
    sections = []
    for (model, scenario), rows in summary.groupby(["model.name", "scenario.name"], sort=True, dropna=False):
        section = Section(str(model), str(scenario), tables.comparison_table(rows))
        if rows[s.THROUGHPUT].notna().any():
            section.figures.append(
                Plot(
                    names("throughput", model, scenario),
                    f"Throughput by backend and machine — {section.title}",
                    plots.throughput_chart(rows, section.title, colors),
                )
            )
        pooled = _pooled_samples(ok[(ok["model.name"] == model) & (ok["scenario.name"] == scenario)], samples)
        if pooled:
            section.figures.append(
                Plot(
                    names("latency", model, scenario),
                    f"Latency distribution (raw samples) — {section.title}",
                    plots.latency_chart(pooled, section.title, colors),
                )
            )
        sections.append(section)
    return sections


def _pooled_samples(rows: pd.DataFrame, samples: pd.Series) -> dict[tuple[str, str], list[float]]:
    """Raw latency samples per (configuration label, machine), repeats concatenated."""
    pooled: dict[tuple[str, str], list[float]] = {}
    for index, label, machine in zip(rows.index, tables.config_labels(rows), rows["machine"]):
        values = samples.get(index)
        if values:
            pooled.setdefault((label, str(machine)), []).extend(values)
    return pooled


def _accuracy_figures(summary: pd.DataFrame, colors: Mapping[str, object], names: _Names) -> list[Plot]:
    if summary.empty or s.ACCURACY not in summary.columns:
        return []
    figures = []
    scored = summary.dropna(subset=[s.ACCURACY, s.THROUGHPUT])
    for (model, kind), rows in scored.groupby(["model.name", "scenario.kind"], sort=True, dropna=False):
        title = f"Accuracy vs throughput — {model} ({kind})"
        front = s.pareto_front(rows)
        figures.append(Plot(names("accuracy", model, kind), title, plots.accuracy_chart(rows, front, title, colors)))
    return figures


def _training_figures(ok: pd.DataFrame, names: _Names) -> list[Plot]:
    if ok.empty:
        return []
    curves = results.raw(ok, LOSS_CURVE)
    figures = []
    for model, rows in ok[curves.notna()].groupby("model.name", sort=True):
        labels = tables.config_labels(rows) + " @ " + rows["machine"].astype(str)
        repeated = labels.duplicated(keep=False)
        lines = {}
        for index, label in labels.items():
            points = _curve(curves[index])
            if points is not None:
                lines[f"{label} [{str(rows.at[index, 'run_id'])[:8]}]" if repeated[index] else label] = points
        if lines:
            title = f"Training loss — {model}"
            figures.append(Plot(names("training", model), title, plots.training_chart(lines, title)))
    return figures


def _curve(points: object) -> list[list[float]] | None:
    """``[[step, loss], ...]`` as floats, or None when the record's curve is not pairs."""
    try:
        array = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        return None
    if array.ndim != 2 or array.shape[1] != 2 or not len(array):
        return None
    return array.tolist()
