"""Numbers to display tables: the one place that decides headers, units and rounding.

Every renderer (rich, Markdown, HTML) shows the same string tables, so a number
reads the same in the terminal and in the HTML file. Values from records stay raw
strings here; each renderer escapes them for its own format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.columns import COMMON_COLUMNS, Column, format_value, missing, significant
from harness.report import summary as s

MIB = 2**20

#: Statuses that mean "no valid measurement": listed with their reasons, never ranked.
PROBLEM_STATUSES = ("mismatch", "failed", "timeout", "interrupted", "unsupported", "unavailable")


def number(value: Any, digits: int = 3) -> str:
    """Round to ``digits`` significant figures, with thousands separators; blank when missing."""
    if missing(value):
        return ""
    return significant(float(value), digits)


def fixed4(value: Any) -> str:
    """Accuracies side by side: same number of decimals so differences line up."""
    return format_value(value, "fixed4")


def with_spread(row: pd.Series, metric: str, fmt: str = "number") -> str:
    """``median (min–max)`` when repeats exist, else the single value."""
    median = format_value(row.get(metric), fmt)
    low, high = row.get(f"{metric}.min"), row.get(f"{metric}.max")
    if not median or row.get("runs", 1) <= 1 or missing(low) or missing(high) or low == high:
        return median
    return f"{median} ({format_value(low, fmt)}–{format_value(high, fmt)})"


def speedup_text(row: pd.Series) -> str:
    value = row.get("speedup")
    if missing(value):
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
    return f"{label} ×{int(world_size)}" if not missing(world_size) and int(world_size) > 1 else label


def config_labels(rows: pd.DataFrame, *, device: bool = True, variant: bool = False) -> pd.Series:
    """:func:`config_label` of every row (``device=False`` leaves the device out;
    ``variant=True`` appends the config keys that vary between the rows)."""
    devices = rows["backend.device"] if device else pd.Series(None, index=rows.index, dtype="object")
    labels = pd.Series(
        [config_label(*values) for values in zip(rows["backend.name"], rows["scenario.precision"], devices, rows["world_size"])],
        index=rows.index,
        dtype="object",
    )
    if variant:
        texts = variant_texts(rows)
        labels = labels.where(texts == "", labels + " · " + texts)
    return labels


def data_parallel(rows: pd.DataFrame) -> bool:
    """True when some row ran on more than one process: only then is a process count shown."""
    return bool((rows["world_size"] > 1).any())


# --- keys that vary between rows become columns ---------------------------------------------------

#: Identity-config keys already shown elsewhere (title, Backend/Precision/Device/Machine columns).
SHOWN_KEYS = frozenset(
    {
        "model.name",
        "scenario.name",
        "scenario.kind",
        "scenario.precision",
        "backend.name",
        "backend.device",
    }
)
#: Shown by the Processes column when that column is there.
PROCESS_KEYS = frozenset({"scenario.distributed.nproc_per_node", "scenario.distributed.nnodes"})
_ABSENT = "(unset)"


def _text(value: object) -> str:
    if value is _MISSING:
        return _ABSENT
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_MISSING = object()


def varying_keys(rows: pd.DataFrame) -> list[str]:
    """Identity-config keys whose values tell these rows apart, in display order.

    First every key with two or more distinct values among the rows that set it (a
    sweep's ``scenario.batch_size``); then, while two rows of *different*
    configurations would still look the same, the key that separates most of them
    (a key one of them lacks counts, shown as ``(unset)``). Keys the table shows
    anyway (backend, precision, device, machine, processes) are never repeated.
    """
    if rows.empty or "identity.config" not in rows.columns:
        return []
    leaves = {index: s.config_leaves(row) for index, row in rows.iterrows()}
    hidden = SHOWN_KEYS | (PROCESS_KEYS if data_parallel(rows) else frozenset())
    candidates = sorted({key for leaf in leaves.values() for key in leaf} - hidden, key=_key_order)
    chosen = [key for key in candidates if len({_text(leaf[key]) for leaf in leaves.values() if key in leaf}) > 1]
    while True:
        clashes = _clashes(rows, leaves, chosen)
        if not clashes:
            return chosen
        remaining = [key for key in candidates if key not in chosen]
        best = max(remaining, default=None, key=lambda key: _separated(clashes, leaves, key))
        if best is None or _separated(clashes, leaves, best) == 0:
            return chosen
        chosen = sorted([*chosen, best], key=_key_order)


#: Varying keys show workload first (scenario, model, data), then the backend's options.
_SECTION_ORDER = {"scenario": 0, "model": 1, "dataset": 2, "backend": 3}


def _key_order(key: str) -> tuple[int, str]:
    return _SECTION_ORDER.get(key.split(".")[0], len(_SECTION_ORDER)), key


def _display(rows: pd.DataFrame, leaves: dict[Any, dict[str, object]], keys: list[str], index: Any) -> tuple[str, ...]:
    row = rows.loc[index]
    shown = [row.get(name) for name in ("backend.name", "scenario.precision", "backend.device", "machine", "world_size")]
    return tuple(map(str, shown)) + tuple(_text(leaves[index].get(key, _MISSING)) for key in keys)


def _clashes(rows: pd.DataFrame, leaves: dict[Any, dict[str, object]], keys: list[str]) -> list[list[Any]]:
    """Groups of rows with different identities that would display identically."""
    groups: dict[tuple[str, ...], list[Any]] = {}
    for index in rows.index:
        groups.setdefault(_display(rows, leaves, keys, index), []).append(index)
    identities = rows["identity"] if "identity" in rows.columns else pd.Series(range(len(rows)), index=rows.index)
    return [members for members in groups.values() if identities[members].nunique() > 1]


def _separated(clashes: list[list[Any]], leaves: dict[Any, dict[str, object]], key: str) -> int:
    return sum(len({_text(leaves[i].get(key, _MISSING)) for i in members}) - 1 for members in clashes)


#: Sections whose keys read well without their section name (``batch_size``, ``compile``).
_IMPLIED = ("scenario.", "backend.")


def key_labels(keys: list[str]) -> dict[str, str]:
    """Column names for config keys: ``scenario.`` and ``backend.`` dropped (``batch_size``,
    ``graph_optimization_level``, ``quantization.mode``), other sections kept
    (``dataset.name``, ``model.path``); the full key where two would read the same."""
    short = {key: next((key[len(p) :] for p in _IMPLIED if key.startswith(p)), key) for key in keys}
    clashes = {label for label in short.values() if list(short.values()).count(label) > 1}
    return {key: key if label in clashes else label for key, label in short.items()}


def variant_columns(rows: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """One text column per varying key (see :func:`varying_keys`), headed by :func:`key_labels`."""
    keys = varying_keys(rows) if keys is None else keys
    labels = key_labels(keys)
    leaves = {index: s.config_leaves(row) for index, row in rows.iterrows()}
    return pd.DataFrame(
        {labels[key]: [_text(leaves[i].get(key, _MISSING)) for i in rows.index] for key in keys},
        index=rows.index,
        dtype="object",
    )


def variant_texts(rows: pd.DataFrame) -> pd.Series:
    """``batch_size=4, graph_optimization_level=all`` per row: the varying keys in one string."""
    columns = variant_columns(rows)
    if columns.empty:
        return pd.Series("", index=rows.index, dtype="object")
    return pd.Series(
        [", ".join(f"{name}={value}" for name, value in values.items()) for _, values in columns.iterrows()],
        index=rows.index,
        dtype="object",
    )


# --- the tables --------------------------------------------------------------------------------

SPEEDUP = "speedup"

#: Figures every kind shares, in display order; throughput and latency always shown.
#: (harness.columns.COMMON_COLUMNS, with the report's own speedup after the accuracies)
_AFTER_ACCURACY = 1 + max(i for i, column in enumerate(COMMON_COLUMNS) if column.key == s.RELATIVE_ACCURACY)
CORE_COLUMNS: tuple[Column, ...] = (
    *COMMON_COLUMNS[:_AFTER_ACCURACY],
    Column(SPEEDUP, "Speedup", "ratio", "higher"),  # vs --baseline: see summary.speedup_vs_baseline
    *COMMON_COLUMNS[_AFTER_ACCURACY:],
)
ALWAYS = frozenset({s.THROUGHPUT, s.LATENCY_P50, s.LATENCY_P99})


def shown_columns(declared: list[Column] | tuple[Column, ...] = ()) -> list[Column]:
    """Core columns, then declared ones whose key no core column already shows (derived ones always)."""
    core_keys = {column.key for column in CORE_COLUMNS}
    extra = [column for column in declared if column.derived or column.key not in core_keys]
    unique = {(column.key, column.label, column.derived): column for column in extra}
    return [*CORE_COLUMNS, *unique.values()]


def comparison_table(rows: pd.DataFrame, declared: list[Column] | tuple[Column, ...] = ()) -> pd.DataFrame:
    """Display table of one model × scenario: a row per configuration and machine.

    Rows are sorted so the machines of one backend sit next to each other. Throughput and
    latency show ``median (min–max)`` over repeats, other figures the median. Config keys
    that vary between the rows come right after the backend columns (one column each,
    e.g. ``batch_size``); metric columns other than throughput and latency, and the
    kind's ``declared`` columns, appear only when some row has a value; ``Processes``
    only when some row is a data-parallel run.
    """
    variants = variant_columns(rows)
    sort_keys = {f"_v{i}": _sortable(variants[name]) for i, name in enumerate(variants.columns)}
    order = [key for key in ("backend.name", "scenario.precision", "backend.device") if key in rows]
    order += [*sort_keys, *(key for key in ("machine", "world_size") if key in rows)]
    rows = rows.assign(**sort_keys).sort_values(order, na_position="last", kind="stable")
    variants = variants.loc[rows.index]
    table = pd.DataFrame(
        {
            "Backend": rows["backend.name"],
            "Precision": rows["scenario.precision"],
            "Device": rows["backend.device"],
            "Machine": rows["machine"],
        }
    )
    if data_parallel(rows):
        table["Processes"] = rows["world_size"].astype(int).astype(str)
    for name in variants.columns:
        table[name if name not in table.columns else f"config {name}"] = variants[name]
    table["Runs"] = rows["runs"].astype(int).astype(str)
    for column in shown_columns(declared):
        if column.derived:
            values = s.relative_values(rows, column)
            if values.notna().any():
                table[_header(table, column.label)] = values.map(lambda value: format_value(value, column.format))
            continue
        if column.key == SPEEDUP:
            if SPEEDUP in rows.columns and rows[SPEEDUP].notna().any():
                table[column.label] = [speedup_text(row) for _, row in rows.iterrows()]
            continue
        if column.key not in rows.columns:
            if column.key in ALWAYS:
                table[column.label] = ""
            continue
        if column.key not in ALWAYS and rows[column.key].map(missing).all():
            continue
        if column.when and column.when in rows.columns:
            visible = rows[column.when].map(lambda value: not missing(value))
        else:
            visible = pd.Series(column.when is None, index=rows.index)
        shown = with_spread if column.key in ALWAYS else (lambda row, key, fmt: format_value(row.get(key), fmt))
        cells = [shown(row, column.key, column.format) if show else "" for (_, row), show in zip(rows.iterrows(), visible)]
        if column.key in ALWAYS or any(cells):
            table[_header(table, column.label)] = cells
    return table.fillna("").astype(str).reset_index(drop=True)


def _sortable(values: pd.Series) -> pd.Series:
    """Numbers in numeric order (``4`` before ``16``), text after them in text order."""
    numbers = pd.to_numeric(values, errors="coerce")
    return pd.Series(list(zip(numbers.isna(), numbers.fillna(0.0), values.astype(str))), index=values.index, dtype="object")


def _header(table: pd.DataFrame, label: str) -> str:
    """``label``, made unique among the table's headers."""
    header, n = label, 1
    while header in table.columns:
        n += 1
        header = f"{label} ({n})"
    return header


def throughput_matrix(summary: pd.DataFrame) -> pd.DataFrame:
    """Median samples/s with one column per machine: the hardware comparison at a glance.

    A row is one configuration (``identity``), whatever machines ran it; ``Config``
    names the keys that vary within its model and scenario. A ``Processes`` column keeps
    data-parallel runs on rows of their own; it is shown only when some run used more
    than one process.
    """
    if summary.empty:
        return pd.DataFrame()
    machines = sorted(summary["machine"].map(str).unique())
    parallel = data_parallel(summary)
    rows: list[dict[str, str]] = []
    for (model, scenario), section in summary.groupby(["model.label", "scenario.name"], sort=True, dropna=False):
        variants = variant_texts(section)
        keys = [key for key in ("identity", "backend.name", "scenario.precision", "backend.device", "world_size") if key in section]
        section = section.assign(_variant=variants, _machine=section["machine"].map(str))
        for _, group in section.groupby(keys, sort=True, dropna=False):
            first = group.iloc[0]
            row = {
                "Model": str(model),
                "Scenario": str(scenario),
                "Backend": str(first["backend.name"]),
                "Precision": str(first["scenario.precision"]),
                "Device": str(first["backend.device"]),
            }
            if parallel:
                row["Processes"] = str(int(first["world_size"]))
            row["Config"] = str(first["_variant"])
            by_machine = group.groupby("_machine")[s.THROUGHPUT].max()
            row.update({machine: number(by_machine.get(machine)) for machine in machines})
            if any(row[machine] for machine in machines):
                rows.append(row)
    wide = pd.DataFrame(rows)
    if wide.empty:
        return wide
    if not (wide["Config"] != "").any():
        wide = wide.drop(columns="Config")
    return wide.fillna("").astype(str)


def machines_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Each machine seen: its CPU, cores, accelerator, fingerprint(s) and record count."""
    grouped = frame.groupby("machine", sort=True, dropna=False)
    return (
        pd.DataFrame(
            {
                "Machine": grouped["machine"].first(),
                "CPU": grouped["hardware.cpu_model"].first(),
                "Cores": grouped["hardware.cores"].first().map(lambda value: "" if pd.isna(value) else str(int(value))),
                "Accelerator": grouped["hardware.accelerator.name"].first(),
                "Fingerprint": grouped["hardware.fingerprint"].agg(lambda values: ", ".join(sorted(set(map(str, values))))),
                "Records": grouped.size().astype(str),
            }
        )
        .fillna("")
        .astype(str)
        .reset_index(drop=True)
    )


def problems_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs that produced no valid measurement, with their status and one-line reason."""
    rows = frame[frame["status"].isin(PROBLEM_STATUSES)].copy()
    rows["_order"] = rows["status"].map(PROBLEM_STATUSES.index)
    rows = rows.sort_values(["_order", "model.name", "scenario.name", "backend.name", "machine"])
    return (
        pd.DataFrame(
            {
                "Status": rows["status"],
                "Model": rows["model.name"],
                "Scenario": rows["scenario.name"],
                "Backend": rows["backend.name"],
                "Precision": rows["scenario.precision"],
                "Machine": rows["machine"],
                "Reason": rows["reason"],
                "Record": rows["path"].map(lambda path: Path(path).name if isinstance(path, str) else ""),
            }
        )
        .fillna("")
        .astype(str)
        .reset_index(drop=True)
    )
