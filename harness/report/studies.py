"""The report's tuning section: one entry per Optuna study found among the records.

A study is recognised from its trials' records alone (``config.tune.study``, see
:mod:`harness.tuning`), so copying a results folder from another machine carries its
tuning history with it; the Optuna database is not needed. Each study shows its best
feasible configuration, every trial with its objective and status (``ok``,
``infeasible`` with the violated bound, ``failed`` with the record's reason), the
objective by trial with the best-so-far line, and Optuna's parameter importance when
enough feasible trials differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from harness import records, tuning
from harness.report import plots
from harness.report.parts import Plot

STUDY = "config.tune.study"
#: Marker colour per trial status in the objective-by-trial figure.
STATUS_COLORS = {"ok": "tab:green", "infeasible": "tab:orange", "failed": "tab:red"}


@dataclass
class Study:
    """One tuning study as a renderer shows it (record strings still unescaped)."""

    name: str
    headline: str
    best: str
    table: pd.DataFrame
    importance: pd.DataFrame
    figures: list[Plot] = field(default_factory=list)


def build(frame: pd.DataFrame, names: Callable[..., str], figures: bool = True) -> list[Study]:
    """The studies among ``frame``'s records (from :func:`harness.results.load`)."""
    if STUDY not in frame.columns or "path" not in frame.columns:
        return []
    paths = frame.loc[frame[STUDY].notna(), "path"].dropna()
    if paths.empty:
        return []
    out = []
    for name, trials in tuning.trials([records.read(path) for path in paths]).items():
        ranked = tuning.importance(trials)
        study = Study(
            name,
            headline(trials),
            tuning.best_text(trials),
            tuning.display(trials),
            pd.DataFrame({"parameter": list(ranked), "importance": [f"{v:.2f}" for v in ranked.values()]}),
        )
        if figures:
            study.figures.append(Plot(names("tuning", name), f"{trials.attrs['objective']} by trial — {name}", objective_chart(trials, name)))
            if ranked:
                study.figures.append(Plot(names("importance", name), f"Parameter importance — {name}", importance_chart(ranked, name)))
        out.append(study)
    return out


def headline(trials: pd.DataFrame) -> str:
    """``maximize throughput (samples/s) over 8 trials: 6 ok, 1 infeasible, 1 failed; p99 <= 20 ms``."""
    counts = trials["status"].value_counts()
    parts = ", ".join(f"{counts[s]} {s}" for s in ("ok", "infeasible", "failed") if s in counts)
    unit = f" ({trials.attrs['unit']})" if trials.attrs.get("unit") else ""
    bound = trials.attrs.get("max_p99_ms")
    constraint = f"; constraint p99 <= {bound:g} ms" if bound is not None else ""
    return f"{trials.attrs['direction']} {trials.attrs['objective']}{unit} on {trials.attrs.get('backend')} over {len(trials)} trials: {parts}{constraint}"


def objective_chart(trials: pd.DataFrame, title: str) -> bytes:
    """Objective by trial, coloured by status; failed trials (no value) sit on the x axis
    as crosses; the line is the best feasible value so far."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with plots._style():
        figure = Figure(figsize=(7, 3.6))
        axes = figure.add_subplot()
        values = pd.to_numeric(trials["objective"], errors="coerce").to_numpy(dtype=float)
        floor = np.nanmin(values) if np.isfinite(values).any() else 0.0
        for status, color in STATUS_COLORS.items():
            mine = (trials["status"] == status).to_numpy()
            if not mine.any():
                continue
            y = np.where(np.isfinite(values[mine]), values[mine], floor)
            axes.scatter(trials["trial"][mine], y, color=color, marker="x" if status == "failed" else "o", label=status, zorder=3)
        feasible = np.where((trials["status"] == "ok").to_numpy(), values, np.nan)
        better = np.fmax if trials.attrs.get("direction") == "maximize" else np.fmin
        so_far = better.accumulate(np.nan_to_num(feasible, nan=-np.inf if better is np.fmax else np.inf))
        so_far[~np.isfinite(so_far)] = np.nan
        axes.step(trials["trial"], so_far, where="post", color="tab:blue", label="best so far")
        unit = f" ({trials.attrs['unit']})" if trials.attrs.get("unit") else ""
        axes.set_xlabel("trial")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(f"{trials.attrs.get('objective')}{unit}")
        axes.set_title(title)
        axes.legend(loc="best", fontsize=8)
        return plots._png(figure)


def importance_chart(ranked: dict[str, Any], title: str) -> bytes:
    """Optuna's parameter importance as horizontal bars (most important on top)."""
    from matplotlib.figure import Figure

    with plots._style():
        figure = Figure(figsize=(6, 0.5 + 0.4 * len(ranked)))
        axes = figure.add_subplot()
        names = list(ranked)[::-1]
        axes.barh(names, [ranked[n] for n in names], color="tab:blue")
        axes.set_xlabel("importance (mean decrease in impurity)")
        axes.set_title(title)
        return plots._png(figure)
