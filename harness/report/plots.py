"""Report figures, rendered headless to PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` and saved through the Agg
canvas, never through pyplot, so a report works without a display and leaves no
global figure state behind. Labels come from records (backend names, machine
labels), so mathtext is switched off: a ``$`` in a label is text, not a formula.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.axis import Axis
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.report import summary as s
from harness.report.parts import Plot as Plot  # plots render into it
from harness.report import tables

STYLE = {
    "text.parse_math": False,
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DPI = 100


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def _floats(values: object) -> np.ndarray:
    """Numbers as floats; anything missing or non-finite is NaN."""
    array = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, copy=True)
    array[~np.isfinite(array)] = np.nan
    return array


def log_axis(axis: Axis) -> None:
    """Log scale with plain tick labels (``10``, ``100``, ``0.5``).

    Matplotlib's log ticks are mathtext (``$\\mathdefault{10^{2}}$``); with mathtext
    off (record labels must stay text) they would print as that raw string.
    """
    axis.axes.set_xscale("log") if axis is axis.axes.xaxis else axis.axes.set_yscale("log")
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def machine_colors(machines: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One colour per machine, the same in every figure of a report."""
    palette = matplotlib.colormaps["tab10"]
    return {machine: palette(i % palette.N) for i, machine in enumerate(sorted(set(map(str, machines))))}


def throughput_chart(rows: pd.DataFrame, title: str, colors: Mapping[str, object]) -> bytes:
    """Grouped bars: median samples/s per backend configuration, one bar per machine.

    ``rows`` is aggregated (see :func:`summary.aggregate_repeats`); whiskers span
    min–max over repeats.
    """
    labels = rows["_label"] if "_label" in rows.columns else tables.config_labels(rows, variant=True)
    rows = rows.assign(_config=labels, machine=rows["machine"].astype(str)).drop_duplicates(["_config", "machine"])
    configs = sorted(rows["_config"].unique())
    machines = sorted(rows["machine"].unique())
    width = 0.8 / len(machines)
    positions = np.arange(len(configs))
    with _style():
        figure = Figure(figsize=(max(6.0, 1.2 * len(configs) * max(1, len(machines)) ** 0.5 + 2), 3.6))
        axes = figure.add_subplot()
        for i, machine in enumerate(machines):
            mine = rows[rows["machine"] == machine].set_index("_config").reindex(configs)
            median = _floats(mine[s.THROUGHPUT])
            low = _floats(mine.get(f"{s.THROUGHPUT}.min", mine[s.THROUGHPUT]))
            high = _floats(mine.get(f"{s.THROUGHPUT}.max", mine[s.THROUGHPUT]))
            errors = np.clip(np.nan_to_num(np.vstack([median - low, high - median]), posinf=0.0, neginf=0.0), 0, None)
            axes.bar(
                positions - 0.4 + width * (i + 0.5),
                np.nan_to_num(median, posinf=0.0, neginf=0.0),
                width,
                yerr=errors,
                capsize=3,
                label=machine,
                color=colors.get(machine),
            )
        axes.set_xticks(positions, configs, rotation=20, ha="right")
        axes.set_ylabel("samples/s (median; whiskers min–max)")
        axes.set_title(title)
        axes.legend(title="machine", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _png(figure)


def latency_chart(
    samples: Mapping[tuple[str, str], Sequence[float]], title: str, colors: Mapping[str, object], x_label: str = "latency per batch (ms)"
) -> bytes:
    """Box plot of raw latency samples per (configuration, machine); repeats pooled.

    A log axis is used when the fastest and slowest medians are far apart, so a
    slow CPU run does not flatten every accelerator box into a line.
    """
    keys = sorted(samples)
    data = [_floats(samples[key]) for key in keys]
    data = [values[np.isfinite(values)] for values in data]
    with _style():
        figure = Figure(figsize=(8.0, 1.0 + 0.45 * len(keys)))
        axes = figure.add_subplot()
        boxes = axes.boxplot(
            data,
            orientation="horizontal",
            tick_labels=[f"{config} @ {machine}" for config, machine in keys],
            patch_artist=True,
            flierprops={"markersize": 2, "alpha": 0.4},
            medianprops={"color": "black"},
        )
        for patch, (_, machine) in zip(boxes["boxes"], keys):
            patch.set_facecolor(colors.get(machine, "lightgray"))
            patch.set_alpha(0.7)
        medians = [float(np.median(values)) for values in data if values.size]
        if medians and min(medians) > 0 and max(medians) / min(medians) > 30:
            log_axis(axes.xaxis)
        axes.invert_yaxis()
        axes.set_xlabel(x_label)
        axes.set_title(title)
        return _png(figure)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def accuracy_chart(
    rows: pd.DataFrame,
    front: pd.Series,
    title: str,
    colors: Mapping[str, object],
    *,
    x: str = s.THROUGHPUT,
    y: str = s.ACCURACY,
    x_label: str = "throughput (samples/s, median)",
    y_label: str = "accuracy (median)",
) -> bytes:
    """Accuracy against throughput: colour is the machine, marker the backend configuration.

    The Pareto front (no other point is both faster and more accurate) is ringed,
    joined and labelled; other points stay unlabelled so labels never pile up. ``x``
    and ``y`` pick other columns (the generation section: decode tokens/s against the
    perplexity ratio to fp32).
    """
    configs = tables.config_labels(rows, device=False, variant=True)
    rows = rows.assign(_config=configs, machine=rows["machine"].astype(str))
    markers = {config: MARKERS[i % len(MARKERS)] for i, config in enumerate(sorted(set(configs)))}
    with _style():
        figure = Figure(figsize=(7.5, 4.2))
        axes = figure.add_subplot()
        for (machine, config), mine in rows.groupby(["machine", "_config"], sort=True):
            axes.scatter(mine[x], mine[y], color=colors.get(machine), marker=markers[config], s=45, zorder=3)
        best = rows[front].sort_values(x)
        axes.plot(best[x], best[y], color="black", linewidth=1, linestyle="--", zorder=2)
        axes.scatter(best[x], best[y], s=180, facecolors="none", edgecolors="black", zorder=4)
        for _, row in best.iterrows():
            axes.annotate(
                f"{row['_config']} @ {row['machine']}",
                (row[x], row[y]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=7,
            )
        handles = [Line2D([], [], color=colors.get(machine), marker="o", linestyle="", label=machine) for machine in sorted(set(rows["machine"]))]
        handles += [Line2D([], [], color="gray", marker=markers[config], linestyle="", label=config) for config in markers]
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=11, linestyle="--", label="Pareto front"))
        axes.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(title)
        axes.margins(x=0.12, y=0.12)
        return _png(figure)


def training_chart(curves: Mapping[str, Sequence[Sequence[float]]], title: str) -> bytes:
    """Loss against step, one line per training run (``metrics.training.loss_curve``)."""
    with _style():
        figure = Figure(figsize=(7.0, 3.8))
        axes = figure.add_subplot()
        for label in sorted(curves):
            points = np.asarray(curves[label], dtype=float).reshape(-1, 2)
            points = points[np.isfinite(points).all(axis=1)]
            axes.plot(points[:, 0], points[:, 1], label=label, linewidth=1.2)
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.set_title(title)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _png(figure)


def serving_latency_chart(
    curves: Mapping[str, pd.DataFrame], slos: Sequence[Mapping[str, float | None]], saturation: Mapping[str, float | None], title: str
) -> bytes:
    """TTFT p99 and ITL p99 against offered rate, one line per configuration @ machine.

    ``curves[label]`` has one row per load step (``offered_rate``, ``ttft_p99_ms``,
    ``itl_p99_ms``, ``verdict``); steps that met the SLOs are filled dots, the others
    crosses. Each distinct SLO in ``slos`` (``ttft_ms``, ``tpot_ms``; runs may have been
    judged by different ones) draws its bounds as dashed lines (ITL is held to the TPOT
    bound: a token's gap is what TPOT averages); ``saturation[label]`` (the closed-loop
    step's throughput) is a dotted vertical line in the series' colour. Latencies spanning
    more than 30× get a log axis, so a slow engine does not flatten the others.
    """
    palette = matplotlib.colormaps["tab10"]
    with _style():
        figure = Figure(figsize=(11.0, 4.2))
        panels = figure.subplots(1, 2)
        for axes, key, slo_key, name in ((panels[0], "ttft_p99_ms", "ttft_ms", "TTFT p99 (ms)"), (panels[1], "itl_p99_ms", "tpot_ms", "ITL p99 (ms)")):
            for i, label in enumerate(sorted(curves)):
                color = palette(i % palette.N)
                steps = curves[label].sort_values("offered_rate")
                x, y = _floats(steps["offered_rate"]), _floats(steps[key])
                axes.plot(x, y, color=color, linewidth=1.2, label=label)
                valid = (steps["verdict"] == "VALID").to_numpy()
                axes.scatter(x[valid], y[valid], color=color, marker="o", s=22, zorder=3)
                axes.scatter(x[~valid], y[~valid], color=color, marker="x", s=26, zorder=3)
                if saturation.get(label):
                    axes.axvline(float(saturation[label] or 0), color=color, linestyle=":", linewidth=1)
            bounds = sorted({float(b) for slo in slos if (b := slo.get(slo_key)) is not None})
            for n, bound in enumerate(bounds):
                axes.axhline(
                    bound,
                    color="#cf222e",
                    linestyle=("--", "-.", ":")[n % 3],
                    linewidth=1,
                    label=f"SLO {'TTFT' if slo_key == 'ttft_ms' else 'TPOT'} {bound:g} ms",
                )
            axes.set_xlabel("offered rate (requests/s)")
            axes.set_ylabel(name)
            axes.set_xlim(left=0)
            values = np.concatenate([_floats(c[key]) for c in curves.values()] + [np.asarray(bounds, dtype=float)])
            values = values[np.isfinite(values) & (values > 0)]
            if values.size and values.max() / values.min() > 30:
                log_axis(axes.yaxis)
            else:
                axes.set_ylim(bottom=0)
        handles, labels = panels[0].get_legend_handles_labels()
        extra = [h for h, label in zip(*panels[1].get_legend_handles_labels()) if label.startswith("SLO")]
        handles += extra
        labels += [h.get_label() for h in extra]
        handles += [Line2D([], [], color="grey", linestyle=":"), Line2D([], [], color="grey", marker="x", linestyle="")]
        labels += ["saturation (closed-loop throughput)", "step over the SLO (INVALID)"]
        figure.legend(handles, labels, loc="lower center", ncol=2, fontsize="small", bbox_to_anchor=(0.5, -0.02 - 0.04 * len(labels) / 2))
        figure.suptitle(title)
        return _png(figure)


def goodput_chart(rows: pd.DataFrame, title: str, colors: Mapping[str, object]) -> bytes:
    """Grouped bars: each configuration's goodput (requests/s meeting every SLO; a sweep's best
    step), one bar per machine, with the request throughput of that step as an outline."""
    configs = sorted(rows["label"].unique())
    machines = sorted(rows["machine"].astype(str).unique())
    width = 0.8 / len(machines)
    positions = np.arange(len(configs))
    with _style():
        figure = Figure(figsize=(max(6.0, 1.2 * len(configs) + 2), 4.0))
        axes = figure.add_subplot()
        for i, machine in enumerate(machines):
            mine = rows[rows["machine"].astype(str) == machine].set_index("label").reindex(configs)
            at = positions - 0.4 + width * (i + 0.5)
            axes.bar(
                at, np.nan_to_num(_floats(mine["request_throughput"])), width, fill=False, edgecolor=colors.get(machine, "grey"), linestyle="--", linewidth=1
            )
            axes.bar(at, np.nan_to_num(_floats(mine["goodput"])), width, color=colors.get(machine), label=machine)
        axes.set_xticks(positions)
        axes.set_xticklabels(configs, rotation=20, ha="right")
        axes.set_ylabel("goodput (requests/s in SLO)")
        axes.legend(fontsize="small", title="machine (dashed: all finished req/s)")
        axes.set_title(title)
        return _png(figure)


def line_chart(lines: Mapping[str, Sequence[Sequence[float]]], title: str, x_label: str, y_label: str) -> bytes:
    """One marked line per label through its ``[x, y]`` points (e.g. decode tokens/s over
    batch size); a log x axis when the points span more than a factor of 16."""
    with _style():
        figure = Figure(figsize=(7.0, 3.8))
        axes = figure.add_subplot()
        spans = []
        for label in sorted(lines):
            points = np.asarray(lines[label], dtype=float).reshape(-1, 2)
            points = points[np.isfinite(points).all(axis=1)]
            points = points[np.argsort(points[:, 0])]
            axes.plot(points[:, 0], points[:, 1], marker="o", label=label, linewidth=1.2)
            spans += list(points[:, 0])
        positive = [value for value in spans if value > 0]
        if positive and max(positive) / min(positive) > 16:
            log_axis(axes.xaxis)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(title)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _png(figure)
