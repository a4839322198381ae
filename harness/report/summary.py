"""The numbers behind a report: repeats aggregated, speedups, Pareto fronts.

Pure functions over DataFrames in the shape :func:`harness.results.load` returns
(dotted column names), so each is unit tested on a small hand-made table and the
renderers (terminal, Markdown, HTML) never compute anything themselves.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.columns import (
    ACCURACY,
    COMMON_COLUMNS,
    DEVICE_PEAK,
    LATENCY_P50,
    LATENCY_P99,
    MFU,
    MODEL_SIZE,
    PEAK_RSS,
    RELATIVE_ACCURACY,
    THROUGHPUT,
    Column,
    missing,
)
from harness.identity import flat

__all__ = [
    "ACCURACY",
    "DEVICE_PEAK",
    "LATENCY_P50",
    "LATENCY_P99",
    "MFU",
    "MODEL_SIZE",
    "PEAK_RSS",
    "RELATIVE_ACCURACY",
    "THROUGHPUT",
]  # the common figures' keys, for the renderers

#: The metrics a report summarises (the common columns); the ones a frame lacks are left out.
METRICS: tuple[str, ...] = tuple(column.key for column in COMMON_COLUMNS)

#: Runs agreeing on all of these are repeats of one configuration. ``identity`` (see
#: :mod:`harness.identity`) is the whole config without run-local and machine keys, so
#: runs that differ in *any* identifying key never share a row; the others name the
#: row and are the same for equal identities (``world_size`` too: it comes from the
#: config). ``machine`` keeps one configuration on two machines apart.
CONFIG_KEYS: tuple[str, ...] = (
    "identity",
    "identity.model",
    "model.name",
    "model.label",
    "scenario.name",
    "scenario.kind",
    "scenario.precision",
    "scenario.batch_size",
    "scenario.seq_len",
    "backend.name",
    "backend.device",
    "machine",
    "world_size",
)

#: Configurations agreeing on these do the same work per sample, so their
#: throughputs can be divided: a speedup is only computed within one workload.
#: ``identity.model`` is the model's architecture and source (not its trained weights)
#: and the dataset. ``world_size`` is not among them: a 2-process run against the
#: 1-process one of the same workload is the scaling speedup.
WORKLOAD_KEYS: tuple[str, ...] = ("model.name", "identity.model", "scenario.kind", "scenario.batch_size", "scenario.seq_len")

#: Short names accepted in ``--baseline`` filters; any other key is a column name.
FILTER_ALIASES: Mapping[str, str] = {
    "backend": "backend.name",
    "device": "backend.device",
    "precision": "scenario.precision",
    "scenario": "scenario.name",
    "kind": "scenario.kind",
    "batch_size": "scenario.batch_size",
    "seq_len": "scenario.seq_len",
    "model": "model.name",
    "machine": "machine",
    "world_size": "world_size",
}


def aggregate_repeats(
    frame: pd.DataFrame,
    keys: Sequence[str] = CONFIG_KEYS,
    metrics: Sequence[str] = METRICS,
    extra: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per configuration: ``runs`` (count), and per metric its median, min and max.

    The median is the headline because one noisy repeat must not move it; min and
    max (columns ``<metric>.min`` / ``<metric>.max``) show how far repeats disagree.
    ``extra`` columns (a kind's declared columns) are summarised the same way when
    numeric, else as their distinct values joined with `` / ``. ``identity.config`` is
    carried along. Metrics and keys missing from ``frame`` are skipped.
    """
    keys = [key for key in keys if key in frame.columns]
    if not keys:
        raise ValueError("no configuration keys in this frame")
    present = [name for name in dict.fromkeys([*metrics, *extra]) if name in frame.columns and name not in keys]
    numeric = [name for name in present if _numeric(frame[name])]
    texts = [name for name in present if name not in numeric]
    grouped = frame.groupby(keys, dropna=False, sort=True)
    parts: list[pd.DataFrame | pd.Series] = [grouped.size().rename("runs")]
    if numeric:
        stats = grouped[numeric].agg(["median", "min", "max"])
        stats.columns = [metric if stat == "median" else f"{metric}.{stat}" for metric, stat in stats.columns]
        parts.append(stats)
    carried = [name for name in ("identity.config",) if name in frame.columns and name not in keys]
    for name in [*texts, *carried]:
        parts.append(grouped[name].agg(_distinct).rename(name))
    out = pd.concat(parts, axis=1).reset_index()
    # Readable order (by name, not by identity hash), the hash last only to break ties.
    order = [key for key in keys if not key.startswith("identity")] + [key for key in keys if key.startswith("identity")]
    return out.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)


def _numeric(series: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    values = series.dropna()
    return bool(len(values)) and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values)


def _distinct(values: pd.Series) -> object:
    """One value when the repeats agree, else each distinct value with its count."""
    texts = [str(value) for value in values if not missing(value)]
    if not texts:
        return None
    counts = pd.Series(texts).value_counts(sort=False)
    if len(counts) == 1:
        return texts[0]
    return " / ".join(f"{value} ×{count}" for value, count in sorted(counts.items()))


def parse_filter(text: str) -> dict[str, str]:
    """``'backend=onnxruntime,precision=fp32'`` -> ``{'backend.name': 'onnxruntime', ...}``.

    Keys may be the short names in :data:`FILTER_ALIASES` or any dotted column name.
    Raises ``ValueError`` with a readable message on a malformed filter.
    """
    wanted: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value in filter, got {part!r}")
        wanted[FILTER_ALIASES.get(key.strip(), key.strip())] = value.strip()
    if not wanted:
        raise ValueError(f"empty filter {text!r}")
    return wanted


def matches(frame: pd.DataFrame, wanted: Mapping[str, str]) -> pd.Series:
    """Rows whose columns equal every ``wanted`` value, compared as text (``32`` matches 32.0)."""
    mask = pd.Series(True, index=frame.index)
    for column, value in wanted.items():
        if column not in frame.columns:
            return pd.Series(False, index=frame.index)
        mask &= frame[column].map(_as_text) == value
    return mask


def _as_text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def speedup_vs_baseline(
    summary: pd.DataFrame,
    baseline: Mapping[str, str],
    *,
    workload: Sequence[str] = WORKLOAD_KEYS,
    metric: str = THROUGHPUT,
    machine: str = "machine",
    scenario: str = "scenario.name",
    world_size: str = "world_size",
) -> pd.DataFrame:
    """Add ``speedup`` (``metric`` / baseline's ``metric``), ``baseline`` and ``baseline.machine``.

    For each row the baseline is a row matching the ``baseline`` filter with the same
    ``workload`` keys; preferred on the same machine (hardware differences would
    otherwise hide in the ratio), else taken from another machine, whose name
    ``baseline.machine`` then reports. Among equals the same scenario wins, then the
    fewest processes (so a data-parallel run is measured against the 1-process run:
    its scaling), then the closest configuration (fewest differing config keys, so a
    sweep's ``graph_optimization_level=disable`` row is its own baseline, not the
    ``all`` one's), then the first in sort order. Rows with no baseline get NaN.
    ``baseline`` is True for the rows measured against themselves: a 2-process run
    matching the filter is still measured against the 1-process one, and is no baseline.
    """
    out = summary.copy()
    bases = out[matches(out, baseline)]
    speedups: list[float] = []
    base_machines: list[object] = []
    own: list[bool] = []
    for index, row in out.iterrows():
        candidates = bases[_same_keys(bases, row, [key for key in workload if key in out.columns])]
        if candidates.empty:
            speedups.append(np.nan)
            base_machines.append(None)
            own.append(False)
            continue
        rank = pd.DataFrame(
            {
                "other_machine": candidates[machine] != row[machine],
                "other_scenario": (candidates[scenario] != row[scenario]) if scenario in out.columns else False,
                "processes": candidates[world_size] if world_size in out.columns else 1,
                "distance": [config_distance(row, candidate) for _, candidate in candidates.iterrows()],
                "machine": candidates[machine].map(_as_text),
            },
            index=candidates.index,
        )
        order = ["other_machine", "other_scenario", "processes", "distance", "machine"]
        chosen = candidates.loc[rank.sort_values(order, kind="stable").index[0]]
        speedups.append(float(row[metric]) / float(chosen[metric]) if chosen[metric] else np.nan)
        base_machines.append(chosen[machine])
        own.append(chosen.name == index)
    out["baseline"] = own
    out["speedup"] = speedups
    out["baseline.machine"] = base_machines
    return out


def _same_keys(frame: pd.DataFrame, row: pd.Series, keys: Sequence[str]) -> pd.Series:
    """Rows of ``frame`` equal to ``row`` on ``keys``, counting missing == missing."""
    mask = pd.Series(True, index=frame.index)
    for key in keys:
        value = row[key]
        mask &= frame[key].isna() if pd.isna(value) else (frame[key] == value)
    return mask


def pareto_front(frame: pd.DataFrame, x: str = THROUGHPUT, y: str = ACCURACY) -> pd.Series:
    """True for rows no other row beats on both ``x`` and ``y`` (both maximised).

    A row is dominated when another is at least as good on both and strictly better
    on one. Rows missing either value are never on the front.
    """
    xs = pd.to_numeric(frame[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(frame[y], errors="coerce").to_numpy(dtype=float)
    valid = ~(np.isnan(xs) | np.isnan(ys))
    vx, vy = xs[valid], ys[valid]
    at_least = (vx[None, :] >= vx[:, None]) & (vy[None, :] >= vy[:, None])
    better = (vx[None, :] > vx[:, None]) | (vy[None, :] > vy[:, None])
    front = np.zeros(len(frame), dtype=bool)
    front[valid] = ~(at_least & better).any(axis=1)
    return pd.Series(front, index=frame.index, name="pareto")


@lru_cache(maxsize=4096)
def _leaves(config_json: str) -> dict[str, object]:
    try:
        return flat(json.loads(config_json))
    except (TypeError, ValueError):
        return {}


def config_leaves(row: pd.Series) -> dict[str, object]:
    """The row's identity config as dotted leaves (empty when the frame has none)."""
    text = row.get("identity.config")
    return _leaves(text) if isinstance(text, str) else {}


def config_distance(a: pd.Series, b: pd.Series) -> int:
    """How many identity-config keys differ between two rows (a key one lacks counts)."""
    left, right = config_leaves(a), config_leaves(b)
    return sum(left.get(key, _ABSENT) != right.get(key, _ABSENT) for key in left.keys() | right.keys())


_ABSENT = object()

#: Rows compared by a column's ``vs`` share these (and differ only in what ``vs`` selects).
REFERENCE_KEYS: tuple[str, ...] = (
    "machine",
    "backend.name",
    "backend.device",
    "model.name",
    "scenario.batch_size",
    "scenario.seq_len",
    "world_size",
)


def relative_values(summary: pd.DataFrame, column: Column) -> pd.Series:
    """``column.key`` of each row divided by that of its reference row (see :class:`Column`).

    The reference row shares :data:`REFERENCE_KEYS`, matches ``column.vs`` and lacks
    ``column.when`` (an unpruned row for a pruned one); among several, the closest
    configuration wins. Rows without ``column.when``, without a value, or without a
    reference get NaN.
    """
    out = pd.Series(np.nan, index=summary.index, dtype="float64")
    if column.key not in summary.columns:
        return out
    values = pd.to_numeric(summary[column.key], errors="coerce")
    has_when = summary[column.when].map(lambda v: not missing(v)) if column.when in summary.columns else (pd.Series(column.when is None, index=summary.index))
    references = summary[matches(summary, column.vs) & ~has_when & values.gt(0)]
    keys = [key for key in REFERENCE_KEYS if key in summary.columns]
    for index, row in summary[has_when & values.notna()].iterrows():
        candidates = references[_same_keys(references, row, keys)]
        if candidates.empty:
            continue
        nearest = min(candidates.index, key=lambda i: config_distance(row, candidates.loc[i]))
        out[index] = float(values[index]) / float(values[nearest])
    return out
