"""Assemble a report once (tables as strings, figures as PNG bytes) for every renderer.

The terminal, Markdown and HTML writers receive a finished :class:`Report` and only
lay it out, so the three can never disagree about a number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness import results
from harness.columns import Column, missing
from harness.report import generation, plots, studies, tables
from harness.report.parts import Plot, Section
from harness.report.serving import sections as serving_sections
from harness.report import summary as s

SAMPLES = "metrics.latency_ms.samples"
LOSS_CURVE = "metrics.training.loss_curve"
#: Which accuracy a record's ``metrics.accuracy.value`` is: perplexity (decoder LLMs) is
#: lower-is-better, so those rows go to the generation section's Pareto, not this chart.
ACCURACY_METRIC = "metrics.accuracy.metric"


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
    tuning: list[studies.Study] = field(default_factory=list)
    serving: list[Section] = field(default_factory=list)
    generation: list[Plot] = field(default_factory=list)


def build(
    frame: pd.DataFrame,
    *,
    baseline: Mapping[str, str] | None = None,
    baseline_text: str | None = None,
    title: str = "harness benchmark report",
    inputs: Sequence[str] = (),
    skipped: Sequence[object] = (),
    figures: bool = True,
) -> Report:
    """Summarise ``frame`` (from :func:`harness.results.load`) into a :class:`Report`.

    ``figures=False`` skips the plots (tables only), e.g. for quick checks of many records.
    """
    frame, notes = _sane(frame)
    declared = results.declared_columns(frame)
    extra = [key for column in declared for key in (column.key, column.when) if key] + [ACCURACY_METRIC]
    ok = frame[frame["status"] == "ok"]
    summary = s.aggregate_repeats(ok, extra=extra) if not ok.empty else pd.DataFrame(columns=[*s.CONFIG_KEYS, "runs"])
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
        sections=_sections(ok, summary, declared, colors, names, figures),
        accuracy=_accuracy_figures(summary, colors, names) if figures else [],
        training=_training_figures(ok, names) if figures else [],
        serving=serving_sections(ok, colors, names, figures),
        generation=[Plot(*made) for made in generation.figures(ok, summary, colors, names, _pooled_samples)] if figures else [],
        problems=tables.problems_table(frame),
        skipped=[str(item) for item in skipped],
        notes=notes,
        tuning=studies.build(frame, names, figures),
    )


def _sane(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` without figures no honest report shows, and a note for each kind removed.

    An MFU above 1 means the peak it was divided by was too low (records from before
    peaks were re-measured on demand): it is blanked, never shown as 170%.
    """
    notes: list[str] = []
    if s.MFU in frame.columns:
        mfu = pd.to_numeric(frame[s.MFU], errors="coerce")
        above = mfu > 1.0
        if above.any():
            frame = frame.copy()
            frame.loc[above, s.MFU] = np.nan
            notes.append(
                f"{int(above.sum())} record(s) carry an MFU above 100% (a GEMM peak measured too low by an "
                "older harness); their MFU is left blank. Re-run them to get an honest figure."
            )
    return frame, notes


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


def _sections(
    ok: pd.DataFrame,
    summary: pd.DataFrame,
    declared: Sequence[Column],
    colors: Mapping[str, object],
    names: _Names,
    figures: bool = True,
) -> list[Section]:
    if summary.empty:
        return []
    samples = results.raw(ok, SAMPLES) if figures else pd.Series(dtype="object")
    sections = []
    for (model, scenario), rows in summary.groupby(["model.label", "scenario.name"], sort=True, dropna=False):
        section = Section(str(model), str(scenario), tables.comparison_table(rows, declared))
        if not figures:
            sections.append(section)
            continue
        labels = _unique(tables.config_labels(rows, variant=True), rows["machine"])
        if pd.to_numeric(rows[s.THROUGHPUT], errors="coerce").notna().any():
            section.figures.append(
                Plot(
                    names("throughput", model, scenario),
                    f"Throughput by backend and machine — {section.title}",
                    plots.throughput_chart(rows.assign(_label=labels), section.title, colors),
                )
            )
        mine = ok[(ok["model.label"] == model) & (ok["scenario.name"] == scenario)]
        pooled = _pooled_samples(mine, rows, labels, samples)
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


def _unique(labels: pd.Series, machines: pd.Series) -> pd.Series:
    """``labels`` made unique per machine (``#2`` appended) so no two bars share a slot."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for label, machine in zip(labels, machines.map(str)):
        n = seen[(label, machine)] = seen.get((label, machine), 0) + 1
        out.append(label if n == 1 else f"{label} #{n}")
    return pd.Series(out, index=labels.index, dtype="object")


def _pooled_samples(runs: pd.DataFrame, rows: pd.DataFrame, labels: pd.Series, samples: pd.Series) -> dict[tuple[str, str], list[float]]:
    """Finite raw latency samples per (configuration label, machine), repeats concatenated.

    A run belongs to the summary row with its identity and machine (the row's label);
    frames without identities fall back to the shown configuration keys.
    """
    keys = list(dict.fromkeys(key for key in ("identity", *s.CONFIG_KEYS) if key in runs.columns and key in rows.columns))
    label_of = dict(zip(_tuples(rows, keys), labels))
    pooled: dict[tuple[str, str], list[float]] = {}
    for index, key, machine in zip(runs.index, _tuples(runs, keys), runs["machine"].map(str)):
        label = label_of.get(key)
        values = samples.get(index)
        if label is None or not values:
            continue
        finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if finite:
            pooled.setdefault((label, machine), []).extend(finite)
    return pooled


def _tuples(frame: pd.DataFrame, keys: list[str]) -> list[tuple[object, ...]]:
    return [tuple(map(_key, values)) for values in frame[keys].itertuples(index=False, name=None)]


def _key(value: object) -> object:
    return None if missing(value) else value


def _accuracy_figures(summary: pd.DataFrame, colors: Mapping[str, object], names: _Names) -> list[Plot]:
    if summary.empty or s.ACCURACY not in summary.columns:
        return []
    figures = []
    scored = summary.dropna(subset=[s.ACCURACY, s.THROUGHPUT])
    if ACCURACY_METRIC in scored.columns:
        scored = scored[scored[ACCURACY_METRIC].astype(str) != "perplexity"]
    for (model, kind), rows in scored.groupby(["model.label", "scenario.kind"], sort=True, dropna=False):
        title = f"Accuracy vs throughput — {model} ({kind})"
        front = s.pareto_front(rows)
        figures.append(Plot(names("accuracy", model, kind), title, plots.accuracy_chart(rows, front, title, colors)))
    return figures


def _training_figures(ok: pd.DataFrame, names: _Names) -> list[Plot]:
    if ok.empty:
        return []
    curves = results.raw(ok, LOSS_CURVE)
    figures = []
    for model, rows in ok[curves.notna()].groupby("model.label", sort=True):
        labels = tables.config_labels(rows, variant=True) + " @ " + rows["machine"].astype(str)
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
    if array.ndim != 2 or array.shape[1] != 2:
        return None
    array = array[np.isfinite(array).all(axis=1)]
    if not len(array):
        return None
    return array.tolist()
