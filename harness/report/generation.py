"""The generation section of a report: decoder LLM runs' figures.

Runs are recognised by what their records hold (``metrics.generation``), never by a
kind's name. Four figures per model, each drawn only when the runs can fill it:

- **decode tokens/s vs batch size**: one line per backend configuration and machine
  (at least two batch sizes);
- **TTFT p50 vs prompt length**: the same over ``scenario.seq_len`` (the prompt length);
- **inter-token latency distribution**: the raw ITL samples, pooled over repeats, one box
  per configuration;
- **compression Pareto**: decode tokens/s against the perplexity ratio to eager fp32
  (``metrics.accuracy.relative``, 1.0 = no loss), the front ringed: what each
  weight-only or lower-precision run buys in speed for what it costs in quality; one
  figure per workload (batch size, prompt length) and weights (``model.checkpoint``:
  random init and a trained checkpoint are never one front) run at two or more precisions.
"""

from __future__ import annotations

from typing import Callable, Mapping

import pandas as pd

from harness import results
from harness.report import plots, tables
from harness.report import summary as s

DECODE = "metrics.generation.decode_tokens_per_s"
TTFT = "metrics.generation.ttft_ms.p50"
ITL_SAMPLES = "metrics.generation.itl_ms.samples"
BATCH = "scenario.batch_size"
PROMPT = "scenario.seq_len"
#: The weights (random init vs a trained checkpoint): perplexity ratios of different weights
#: are not one trade-off, so a Pareto never mixes them.
WEIGHTS = "model.checkpoint"


#: ``(runs, summary rows, row labels, raw samples) -> {(label, machine): samples}``: the
#: report's pooling of raw samples over repeats (``build._pooled_samples``).
Pool = Callable[[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series], Mapping[tuple[str, str], list[float]]]


def figures(ok: pd.DataFrame, summary: pd.DataFrame, colors: Mapping[str, object], name: Callable[..., str], pool: Pool) -> list[tuple[str, str, bytes]]:
    """``(name, title, png)`` of every generation figure the runs fill."""
    if summary.empty or DECODE not in summary.columns:
        return []
    rows = summary[pd.to_numeric(summary[DECODE], errors="coerce").notna()]
    out: list[tuple[str, str, bytes]] = []
    for model, mine in rows.groupby("model.label", sort=True):
        labels = tables.config_labels(mine) + " @ " + mine["machine"].astype(str)
        for key, x_label, y, y_label, stem in (
            (BATCH, "batch size (prompts per call)", DECODE, "decode tokens/s (median)", "tokens-vs-batch"),
            (PROMPT, "prompt length (tokens)", TTFT, "TTFT p50 (ms, median)", "ttft-vs-prompt"),
        ):
            lines = _lines(mine, labels, key, y)
            if lines:
                title = f"{y_label.split(' (')[0]} vs {x_label.split(' (')[0]} — {model}"
                out.append((name(stem, model), title, plots.line_chart(lines, title, x_label, y_label)))
        runs = ok[ok["model.label"] == model]
        pooled = pool(runs, mine, tables.config_labels(mine, variant=True), results.raw(runs, ITL_SAMPLES)) if len(runs) else {}
        if pooled:
            title = f"Inter-token latency (raw samples) — {model}"
            out.append((name("itl", model), title, plots.latency_chart(pooled, title, colors, "inter-token latency (ms)")))
        out += _pareto(mine, model, colors, name)
    return out


def _pareto(rows: pd.DataFrame, model: str, colors: Mapping[str, object], name: Callable[..., str]) -> list[tuple[str, str, bytes]]:
    """One compression Pareto per workload (batch size, prompt length) and weights
    (``model.checkpoint``) run at two or more precisions: speed and quality are only
    traded within the same work on the same model."""
    if s.RELATIVE_ACCURACY not in rows.columns:
        return []
    scored = rows[pd.to_numeric(rows[s.RELATIVE_ACCURACY], errors="coerce").notna()]
    scored = scored.assign(**{WEIGHTS: [_weights(row) for _, row in scored.iterrows()]})
    several = scored[WEIGHTS].nunique() > 1
    out = []
    for (batch, prompt, weights), group in scored.groupby([BATCH, PROMPT, WEIGHTS], sort=True, dropna=False):
        if group["scenario.precision"].nunique() < 2:
            continue
        suffix = f", model.checkpoint={weights}" if several else ""
        title = f"Compression Pareto: decode tokens/s vs perplexity ratio — {model}, batch {_plain(batch)}, prompt {_plain(prompt)}{suffix}"
        front = s.pareto_front(group, DECODE, s.RELATIVE_ACCURACY)
        parts = (_plain(batch), _plain(prompt), *((str(weights),) if several else ()))
        out.append(
            (
                name("pareto", model, *parts),
                title,
                plots.accuracy_chart(
                    group,
                    front,
                    title,
                    colors,
                    x=DECODE,
                    y=s.RELATIVE_ACCURACY,
                    x_label="decode tokens/s (median)",
                    y_label="perplexity ratio to eager fp32 (1.0 = no loss)",
                ),
            )
        )
    return out


def _weights(row: pd.Series) -> str:
    """The row's ``model.checkpoint`` from its identity config (a path as ``name@hash``), or ``null``."""
    value = s.config_leaves(row).get(WEIGHTS)
    return "null" if value is None else str(value)


def _plain(value: object) -> str:
    """``128`` for 128.0 (pandas turns integer columns with gaps into floats)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def _lines(rows: pd.DataFrame, labels: pd.Series, x: str, y: str) -> dict[str, list[list[float]]]:
    """``{label: [[x, y], ...]}`` for the configurations measured at two or more ``x`` values,
    the other workload keys held equal (one line per remaining variant)."""
    if x not in rows.columns or y not in rows.columns:
        return {}
    others = [key for key in (BATCH, PROMPT, "scenario.name") if key != x and key in rows.columns]
    lines: dict[str, list[list[float]]] = {}
    for (label, *rest), group in rows.assign(_label=labels).groupby(["_label", *others], sort=True, dropna=False):
        points = group[[x, y]].apply(pd.to_numeric, errors="coerce").dropna().groupby(x)[y].median()
        if len(points) >= 2:
            suffix = ", ".join(f"{'batch' if key == BATCH else 'prompt'} {_plain(value)}" for key, value in zip(others, rest) if key != "scenario.name")
            lines[f"{label} ({suffix})" if suffix else label] = [[float(a), float(b)] for a, b in points.items()]
    return lines
