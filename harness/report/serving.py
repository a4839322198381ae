"""The serving part of a report: how each engine holds up as the offered rate grows.

A serving record (``scenario.kind=serving``) carries one entry per load step under
``metrics.serving.steps`` (offered rate, achieved throughput, TTFT/ITL/TPOT
percentiles, goodput, VALID/INVALID), the sweep's saturation rate (its closed-loop
step's throughput) and the SLO it was judged by. Per model · scenario this module
makes:

- a table with one row per step of every run (terminal, Markdown, HTML alike), the
  saturation step marked, so the numbers behind each curve are readable;
- latency-vs-rate curves: TTFT p99 and ITL p99 against offered rate, the SLO bounds
  as lines, the saturation rate as a vertical line per series;
- goodput bars per configuration and machine (a sweep's best step).

The steps are raw lists, read from the record files on demand (:func:`results.raw`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import pandas as pd

from harness import results
from harness.report import plots, tables
from harness.report.parts import Plot, Section

STEPS = "metrics.serving.steps"
SATURATION = "metrics.serving.saturation_rate"
SLO_KEYS = {"ttft_ms": "metrics.serving.slo.ttft_ms", "tpot_ms": "metrics.serving.slo.tpot_ms"}


TOPIC = "Serving under load"


def step_frame(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per load step of every serving run in ``ok``: ``label`` (configuration @ machine
    identity), ``machine``, ``model``, ``scenario``, ``step``, ``load``, ``offered_rate``,
    ``request_throughput``, ``output_tokens_per_s``, ``ttft_p99_ms``, ``itl_p99_ms``,
    ``tpot_p99_ms``, ``goodput``, ``verdict``, ``saturation`` (this step is the closed-loop
    throughput step the sweep measured saturation with)."""
    columns = [
        "label",
        "machine",
        "model",
        "scenario",
        "run_id",
        "step",
        "load",
        "offered_rate",
        "request_throughput",
        "output_tokens_per_s",
        "ttft_p99_ms",
        "itl_p99_ms",
        "tpot_p99_ms",
        "goodput",
        "verdict",
        "saturation",
    ]
    if ok.empty or "scenario.kind" not in ok.columns:
        return pd.DataFrame(columns=columns)
    runs = ok[ok["scenario.kind"] == "serving"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    steps = results.raw(runs, STEPS)
    labels = tables.config_labels(runs, variant=True)
    rows = []
    for index, run_steps in steps.items():
        if not run_steps:
            continue
        for number, step in enumerate(run_steps, 1):
            if not isinstance(step, dict):
                continue
            rows.append(
                {
                    "label": str(labels[index]),
                    "machine": str(runs.at[index, "machine"]),
                    "model": str(runs.at[index, "model.label"]),
                    "scenario": str(runs.at[index, "scenario.name"]),
                    "run_id": str(runs.at[index, "run_id"]),
                    "step": number,
                    "load": str(step.get("name") or step.get("kind") or ""),
                    "offered_rate": _number(step.get("offered_rate")),
                    "request_throughput": _number(step.get("request_throughput")),
                    "output_tokens_per_s": _number(step.get("output_tokens_per_s")),
                    "ttft_p99_ms": _p99(step, "ttft_ms"),
                    "itl_p99_ms": _p99(step, "itl_ms"),
                    "tpot_p99_ms": _p99(step, "tpot_ms"),
                    "goodput": _number(step.get("goodput")),
                    "verdict": step.get("verdict"),
                    "saturation": step.get("name") == "throughput",
                }
            )
    return pd.DataFrame(rows, columns=columns)


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else math.nan


def _p99(step: Mapping[str, Any], key: str) -> float:
    summary = step.get(key)
    return _number(summary.get("p99")) if isinstance(summary, dict) else math.nan


def sections(ok: pd.DataFrame, colors: Mapping[str, object], name: Callable[..., str], figures: bool = True) -> list[Section]:
    """A :class:`Section` (topic :data:`TOPIC`) per model · scenario with serving steps."""
    frame = step_frame(ok)
    out = []
    for (model, scenario), steps in frame.groupby(["model", "scenario"], sort=True):
        section = Section(str(model), str(scenario), step_table(steps), topic=TOPIC)
        if figures:
            runs = ok[ok["run_id"].isin(steps["run_id"])]
            slos = [dict(zip(SLO_KEYS, values)) for values in {tuple(_number(run.get(column)) for column in SLO_KEYS.values()) for _, run in runs.iterrows()}]
            slos = [{k: (None if math.isnan(v) else v) for k, v in slo.items()} for slo in slos]
            series = steps.assign(series=steps["label"] + " @ " + steps["machine"])
            curves = {label: rows for label, rows in series.groupby("series", sort=True)}
            saturation = {label: _first(rows[rows["saturation"]], "request_throughput") for label, rows in curves.items()}
            section.figures.append(
                Plot(
                    name("serving-latency", model, scenario),
                    f"Latency vs offered rate — {model} · {scenario}",
                    plots.serving_latency_chart(curves, slos, saturation, f"{model} · {scenario}"),
                )
            )
            best = goodput_rows(steps)
            if not best.empty:
                section.figures.append(
                    Plot(
                        name("goodput", model, scenario),
                        f"Goodput by backend and machine — {model} · {scenario}",
                        plots.goodput_chart(best, f"Goodput — {model} · {scenario}", colors),
                    )
                )
        out.append(section)
    return out


def _first(frame: pd.DataFrame, column: str) -> float | None:
    if column not in frame.columns:
        return None
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.iloc[0]) if len(values) else None


def goodput_rows(steps: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and machine, the step with the highest goodput (ties: the higher
    offered rate); empty when no step has a goodput (no SLO set)."""
    scored = steps.dropna(subset=["goodput"])
    if scored.empty:
        return scored
    ordered = scored.sort_values(["goodput", "offered_rate"], ascending=[False, False])
    return ordered.drop_duplicates(["label", "machine"]).sort_values(["label", "machine"]).reset_index(drop=True)


def step_table(steps: pd.DataFrame) -> pd.DataFrame:
    """The display table: one row per step, numbers formatted, the saturation step marked."""

    def fixed(value: float, digits: int) -> str:
        return "" if math.isnan(value) else f"{value:.{digits}f}"

    ordered = steps.sort_values(["label", "machine", "run_id", "step"])
    return pd.DataFrame(
        {
            "Configuration": ordered["label"],
            "Machine": ordered["machine"],
            "Step": ordered["step"].astype(int),
            "Load": [f"{load} (saturation)" if sat else load for load, sat in zip(ordered["load"], ordered["saturation"])],
            "Offered req/s": [fixed(v, 3) for v in ordered["offered_rate"]],
            "Req/s": [fixed(v, 3) for v in ordered["request_throughput"]],
            "Out tok/s": [fixed(v, 1) for v in ordered["output_tokens_per_s"]],
            "TTFT p99 ms": [fixed(v, 1) for v in ordered["ttft_p99_ms"]],
            "ITL p99 ms": [fixed(v, 1) for v in ordered["itl_p99_ms"]],
            "Goodput req/s": [fixed(v, 3) for v in ordered["goodput"]],
            "SLO": [v if isinstance(v, str) else "" for v in ordered["verdict"]],
        }
    ).reset_index(drop=True)
