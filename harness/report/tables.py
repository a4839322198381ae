"""Numbers to display tables: the one place that decides headers, units and rounding.

Every renderer (rich, Markdown, HTML) shows the same string tables, so a number
reads the same in the terminal and in the HTML file. Values from records stay raw
strings here; each renderer escapes them for its own format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report import summary as s

MIB = 2**20

#: Statuses that mean "no valid measurement": listed with their reasons, never ranked.
PROBLEM_STATUSES = ("mismatch", "failed", "timeout", "unsupported", "unavailable")


def number(value: Any, digits: int = 3) -> str:
    """Round to ``digits`` significant figures, with thousands separators; blank when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    value = float(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - magnitude, 0)
    return f"{value:,.{decimals}f}"


def fixed4(value: Any) -> str:
    """Accuracies side by side: same number of decimals so differences line up."""
    return "" if value is None or pd.isna(value) else f"{float(value):.4f}"


def with_spread(row: pd.Series, metric: str, digits: int = 3) -> str:
    """``median (min–max)`` when repeats exist, else the single value."""
    median = number(row.get(metric), digits)
    low, high = row.get(f"{metric}.min"), row.get(f"{metric}.max")
    if not median or row.get("runs", 1) <= 1 or low == high:
        return median
    return f"{median} ({number(low, digits)}–{number(high, digits)})"


def speedup_text(row: pd.Series) -> str:
    value = row.get("speedup")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:.2f}×"
    if row.get("baseline"):
        return text + " (baseline)"
    if row.get("baseline.machine") is not None and row.get("baseline.machine") != row.get("machine"):
        return text + f" (vs {row['baseline.machine']})"
    return text


def config_label(backend: object, precision: object, device: object = None, world_size: object = 1) -> str:
    """``onnxruntime fp32 (cpu)``, ``pytorch fp32 (cpu) ×2``: how one configuration is named.

    The process count is named only for data-parallel runs (more than one process),
    so 1- and 2-process runs of one configuration never share a label in a figure.
    """
    label = f"{backend} {precision}"
    if isinstance(device, str) and device:
        label += f" ({device})"
    return f"{label} ×{int(world_size)}" if pd.notna(world_size) and int(world_size) > 1 else label


def config_labels(rows: pd.DataFrame, *, device: bool = True) -> pd.Series:
    """:func:`config_label` of every row (``device=False`` leaves the device out)."""
    devices = rows["backend.device"] if device else pd.Series(None, index=rows.index, dtype="object")
    return pd.Series(
        [
            config_label(*values)
            for values in zip(rows["backend.name"], rows["scenario.precision"], devices, rows["world_size"])
        ],
        index=rows.index,
        dtype="object",
    )


def data_parallel(rows: pd.DataFrame) -> bool:
    """True when some row ran on more than one process: only then is a process count shown."""
    return bool((rows["world_size"] > 1).any())


def comparison_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Display table of one model × scenario: a row per backend configuration and machine.

    Rows are sorted so the machines of one backend sit next to each other; optional
    columns (accuracy, speedup, size, MFU) appear only when some row has a value, and
    ``Processes`` only when some row is a data-parallel run.
    """
    rows = rows.sort_values(
        ["backend.name", "scenario.precision", "backend.device", "machine", "world_size"], na_position="last"
    )
    table = pd.DataFrame(
        {
            "Backend": rows["backend.name"],
            "Precision": rows["scenario.precision"],
            "Device": rows["backend.device"],
            "Machine": rows["machine"],
            "Runs": rows["runs"].astype(int).astype(str),
            "Throughput (samples/s)": [with_spread(row, s.THROUGHPUT) for _, row in rows.iterrows()],
            "p50 (ms)": [with_spread(row, s.LATENCY_P50) for _, row in rows.iterrows()],
            "p99 (ms)": [with_spread(row, s.LATENCY_P99) for _, row in rows.iterrows()],
        }
    )
    if data_parallel(rows):
        table.insert(table.columns.get_loc("Machine") + 1, "Processes", rows["world_size"].astype(int).astype(str))
    optional = {
        "Accuracy": (s.ACCURACY, fixed4),
        "Rel. accuracy": (s.RELATIVE_ACCURACY, fixed4),
        "Speedup": ("speedup", None),
        "Size (MiB)": (s.MODEL_SIZE, lambda value: number(value / MIB, 3)),
        "MFU": (s.MFU, lambda value: "" if pd.isna(value) else f"{value:.1%}"),
    }
    for header, (column, fmt) in optional.items():
        if column not in rows.columns or rows[column].isna().all():
            continue
        if fmt is None:
            table[header] = [speedup_text(row) for _, row in rows.iterrows()]
        else:
            table[header] = rows[column].map(fmt)
    return table.fillna("").astype(str).reset_index(drop=True)


def throughput_matrix(summary: pd.DataFrame) -> pd.DataFrame:
    """Median samples/s with one column per machine: the hardware comparison at a glance.

    A ``Processes`` column keeps data-parallel runs on rows of their own; it is shown
    only when some run used more than one process.
    """
    if summary.empty:
        return pd.DataFrame()
    index = ["model.name", "scenario.name", "backend.name", "scenario.precision", "backend.device", "world_size"]
    wide = summary.pivot_table(index=index, columns="machine", values=s.THROUGHPUT, aggfunc="max", dropna=False)
    wide = wide.dropna(how="all").map(number)
    wide.columns = [str(column) for column in wide.columns]
    wide = wide.reset_index().rename(
        columns={
            "model.name": "Model",
            "scenario.name": "Scenario",
            "backend.name": "Backend",
            "scenario.precision": "Precision",
            "backend.device": "Device",
            "world_size": "Processes",
        }
    )
    if not data_parallel(summary):
        wide = wide.drop(columns="Processes")
    return wide.fillna("").astype(str)


def machines_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Each machine seen: its CPU, cores, accelerator, fingerprint(s) and record count."""
    grouped = frame.groupby("machine", sort=True, dropna=False)
    return pd.DataFrame(
        {
            "Machine": grouped["machine"].first(),
            "CPU": grouped["hardware.cpu_model"].first(),
            "Cores": grouped["hardware.cores"].first().map(lambda value: "" if pd.isna(value) else str(int(value))),
            "Accelerator": grouped["hardware.accelerator.name"].first(),
            "Fingerprint": grouped["hardware.fingerprint"].agg(lambda values: ", ".join(sorted(set(map(str, values))))),
            "Records": grouped.size().astype(str),
        }
    ).fillna("").astype(str).reset_index(drop=True)


def problems_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs that produced no valid measurement, with their status and one-line reason."""
    rows = frame[frame["status"].isin(PROBLEM_STATUSES)].copy()
    rows["_order"] = rows["status"].map(PROBLEM_STATUSES.index)
    rows = rows.sort_values(["_order", "model.name", "scenario.name", "backend.name", "machine"])
    return pd.DataFrame(
        {
            "Status": rows["status"],
            "Model": rows["model.name"],
            "Scenario": rows["scenario.name"],
            "Backend": rows["backend.name"],
            "Precision": rows["scenario.precision"],
            "Machine": rows["machine"],
            "Reason": rows["reason"],
            "Record": rows["path"].map(lambda path: Path(path).name),
        }
    ).fillna("").astype(str).reset_index(drop=True)
