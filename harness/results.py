"""Load run records from any number of folders (from any machines) into one DataFrame.

Reports, notebooks and exports all start from the same flat table: one row per
record, nested sections flattened into dotted columns (``metrics.latency_ms.p50``,
``backend.name``, ``hardware.cpu_model``), plus ``machine`` (a readable name for the
machine kind), ``world_size`` (how many processes produced the numbers) and ``path``
(the file the row came from).

Which experiment a row is (:mod:`harness.identity`): ``identity`` is a short hash of
the record's config without run-local and machine keys and with machine-local paths
replaced by their content digests; ``identity.config`` is that config as canonical
JSON; ``identity.model`` hashes the model (architecture and source, not the display
name) and dataset sections; ``model.label`` is the model's name, with the checkpoint
folder and digest when it came from a path. ``columns`` holds the report columns the
record's scenario kind declared (JSON; :func:`declared_columns`). Infinities in
numeric columns read as NaN: a report never draws or divides by them.

Raw arrays (latency samples, training curves) stay out of the flat columns: they
would make every CSV cell a megabyte and every groupby slow. :func:`raw` fetches
them on demand from the record files named in ``path``.

A results folder is shared, copied between machines and written concurrently, so
a bad file (truncated JSON, a record from a newer schema, a stray JSON that is not
a record) must never break a report: it is skipped and named, with its problem.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import jsonschema
import numpy as np
import pandas as pd

from harness import identity, records
from harness.columns import COMMON_METRICS, Column, from_record

PathLike = str | os.PathLike[str]

#: Columns every loaded frame has, even when no record fills them, so callers can
#: select them without checking first.
CORE_COLUMNS: tuple[str, ...] = (
    "run_id",
    "created",
    "status",
    "reason",
    "machine",
    "world_size",
    "identity",
    "identity.model",
    "model.name",
    "model.label",
    "model.size_bytes",
    "scenario.name",
    "scenario.kind",
    "scenario.precision",
    "scenario.batch_size",
    "scenario.seq_len",
    "backend.name",
    "backend.version",
    "backend.device",
    "hardware.label",
    "hardware.cpu_model",
    "hardware.cores",
    "hardware.accelerator.name",
    "hardware.fingerprint",
    *(key for key in COMMON_METRICS if key != "model.size_bytes"),
)

#: Columns coerced to floats (a record may carry ``null`` for any of them): the common
#: figures (:data:`harness.columns.COMMON_METRICS`, the one list) and the numeric config keys.
NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            "model.size_bytes",
            "scenario.batch_size",
            "scenario.seq_len",
            "hardware.cores",
            *COMMON_METRICS,
        )
    )
)


class MalformedRecordWarning(UserWarning):
    """A file under a results folder could not be read as a valid run record."""


@dataclass(frozen=True)
class Skipped:
    """A file that was not loaded, and why (one line)."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class LoadResult:
    """What :func:`collect` found: the flat table and the files it had to skip."""

    frame: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)


def load(*paths: PathLike) -> pd.DataFrame:
    """Flat table of every valid record under ``paths``; warn about each skipped file.

    ``paths`` are record files, folders (searched recursively for ``*.json``,
    hidden files and folders such as the writer's ``.tmp-*`` files ignored) or glob
    patterns (``**`` allowed). A malformed record raises a
    :class:`MalformedRecordWarning` naming its path and problem and is left out.
    Raises ``FileNotFoundError`` when a path does not exist or a pattern matches nothing.
    """
    result = collect(*paths)
    for skipped in result.skipped:
        warnings.warn(f"skipped {skipped}", MalformedRecordWarning, stacklevel=2)
    return result.frame


def collect(*paths: PathLike) -> LoadResult:
    """Like :func:`load`, but return the skipped files instead of warning about them.

    For callers (the report CLI) that present problems themselves.
    """
    loaded: list[tuple[Path, dict[str, Any]]] = []
    skipped: list[Skipped] = []
    seen_runs: dict[str, Path] = {}
    for path in record_files(*paths):
        try:
            record = _read_valid(path)
        except _Invalid as problem:
            skipped.append(Skipped(path, str(problem)))
            continue
        first = seen_runs.setdefault(record["run_id"], path)
        if first != path:
            skipped.append(Skipped(path, f"duplicate of run {record['run_id']} already loaded from {first}"))
            continue
        loaded.append((path, record))
    return LoadResult(flatten([record for _, record in loaded], [path for path, _ in loaded]), skipped)


def record_files(*paths: PathLike) -> list[Path]:
    """The JSON files that ``paths`` name, each once, in a stable order."""
    found: dict[Path, None] = {}
    for given in paths:
        for path in _expand(given):
            found.setdefault(path.resolve(), None)
    return list(found)


def _expand(given: PathLike) -> Iterator[Path]:
    text = os.fspath(given)
    if any(char in text for char in "*?["):
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise FileNotFoundError(f"no files match {text}")
        for match in matches:
            yield from _files_at(Path(match))
        return
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"path not found: {text}")
    yield from _files_at(path)


def _files_at(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for candidate in sorted(path.rglob("*.json")):
        relative = candidate.relative_to(path).parts
        if candidate.is_file() and not any(part.startswith(".") for part in relative):
            yield candidate


class _Invalid(Exception):
    """Why one file is not a usable record."""


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(records.schema())


def _read_valid(path: Path) -> dict[str, Any]:
    try:
        record = records.read(path)
    except json.JSONDecodeError as error:
        raise _Invalid(f"invalid JSON ({error})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise _Invalid(f"unreadable ({error})") from error
    problem = jsonschema.exceptions.best_match(_validator().iter_errors(record))
    if problem is not None:
        raise _Invalid(f"schema violation at {problem.json_path}: {problem.message}")
    return record


def flatten(recs: list[dict[str, Any]], paths: Iterable[PathLike] | None = None) -> pd.DataFrame:
    """One row per record with dotted columns; list-valued fields are left out (see :func:`raw`)."""
    frame = pd.json_normalize(recs, sep=".") if recs else pd.DataFrame()
    list_columns = [name for name in frame.columns if frame[name].map(lambda value: isinstance(value, list)).any()]
    frame = frame.drop(columns=list_columns)
    # A section that is null in some records (``hardware.accelerator: null``) leaves an
    # all-null parent column beside its children; the children carry the information.
    parents = [name for name in frame.columns if frame[name].isna().all() and any(other.startswith(name + ".") for other in frame.columns)]
    frame = frame.drop(columns=parents)
    absent = [name for name in dict.fromkeys([*CORE_COLUMNS, *NUMERIC_COLUMNS]) if name not in frame.columns]
    frame = pd.concat([frame, pd.DataFrame({name: [None] * len(frame) for name in absent}, index=frame.index)], axis=1)
    for name in NUMERIC_COLUMNS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    numeric = frame.select_dtypes(include="number").columns
    frame[numeric] = frame[numeric].replace([np.inf, -np.inf], np.nan)
    frame["created"] = pd.to_datetime(frame["created"], utc=True, errors="coerce", format="ISO8601")
    frame["machine"] = machine_names(frame)
    frame["world_size"] = world_sizes(frame)
    ids = _identity_columns(recs, frame.index)
    frame = pd.concat([frame.drop(columns=list(ids.columns), errors="ignore"), ids], axis=1).copy()  # one block per dtype
    frame["path"] = [str(path) for path in paths] if paths is not None else None
    leading = [name for name in CORE_COLUMNS if name in frame.columns]
    rest = sorted(name for name in frame.columns if name not in leading and name != "path")
    return frame[leading + rest + ["path"]].reset_index(drop=True)


def _identity_columns(recs: list[dict[str, Any]], index: pd.Index) -> pd.DataFrame:
    """The identity columns described in the module doc, one row per record."""
    configs = [identity.identity_config(record) for record in recs]
    return pd.DataFrame(
        {
            "identity": [identity.key_of(config) for config in configs],
            "identity.config": [identity.canonical(config) for config in configs],
            "identity.model": [
                identity.key_of([identity.without(config.get("model") or {}, ["checkpoint", "name"]), config.get("dataset")]) for config in configs
            ],
            "model.label": [_model_label(record, config) for record, config in zip(recs, configs)],
            "columns": [identity.canonical([c.as_dict() for c in from_record(record)]) for record in recs],
        },
        index=index,
        dtype="object",
    )


def _model_label(record: dict[str, Any], config: dict[str, Any]) -> str:
    """``bert_small``, or ``bert_small [my-ckpt@1a2b…]`` for a model loaded from a path."""
    name = str((record.get("model") or {}).get("name") or "?")
    token = identity.get(config, "model.path")
    return f"{name} [{token}]" if identity.is_path_value(token) else name


def declared_columns(frame: pd.DataFrame) -> list[Column]:
    """Every report column the rows' scenario kinds declared, in first-seen order, once each."""
    seen: dict[tuple[str, str], Column] = {}
    if "columns" not in frame.columns:
        return []
    for text in frame["columns"].dropna().unique():
        try:
            entries = json.loads(text)
        except (TypeError, ValueError):
            continue
        for column in from_record({"columns": entries}):
            seen.setdefault((column.key, column.label), column)
    return list(seen.values())


def machine_names(frame: pd.DataFrame) -> pd.Series:
    """``hardware.label`` where set, else a short name from CPU, cores and accelerator.

    Two different fingerprints that shorten to the same name get the fingerprint's
    first characters appended, so distinct machine kinds never merge silently.
    """
    if frame.empty:
        return pd.Series([], dtype="object")
    auto = [
        machine_name(cpu, cores, accelerator)
        for cpu, cores, accelerator in zip(frame["hardware.cpu_model"], frame["hardware.cores"], frame["hardware.accelerator.name"])
    ]
    fingerprints = frame["hardware.fingerprint"].astype("object")
    kinds = pd.DataFrame({"auto": auto, "fingerprint": fingerprints})
    ambiguous = kinds.groupby("auto")["fingerprint"].transform("nunique") > 1
    auto = [f"{name} #{str(fp)[:6]}" if clash else name for name, fp, clash in zip(auto, fingerprints, ambiguous)]
    labels = frame["hardware.label"].astype("object")
    return pd.Series(
        [label if isinstance(label, str) and label.strip() else name for label, name in zip(labels, auto)],
        index=frame.index,
        dtype="object",
    )


TRAINING_WORLD_SIZE = "metrics.training.world_size"


def world_sizes(frame: pd.DataFrame) -> pd.Series:
    """Processes behind each row: ``metrics.training.world_size``, else 1.

    A data-parallel training record reports its global throughput, so it must never
    be pooled with a one-process run of the same configuration. Inference runs and
    records written before training carried a world size are one process.
    """
    given = frame[TRAINING_WORLD_SIZE] if TRAINING_WORLD_SIZE in frame.columns else pd.Series(float("nan"), index=frame.index)
    return pd.to_numeric(given, errors="coerce").fillna(1).astype("int64")


_CPU_NOISE = re.compile(r"\((?:R|TM|tm)\)|\bCPU\b|\bProcessor\b|@\s*[\d.]+\s*[GM]Hz|\b\d+-Core\b", re.IGNORECASE)


def machine_name(cpu_model: Any, cores: Any, accelerator: Any = None) -> str:
    """Short readable machine name, e.g. ``Intel Xeon Platinum 8480+ 16c + NVIDIA H200``."""
    cpu = " ".join(_CPU_NOISE.sub(" ", str(cpu_model or "unknown CPU")).split()) or "unknown CPU"
    name = f"{cpu} {int(cores)}c" if _is_number(cores) else cpu
    if isinstance(accelerator, str) and accelerator.strip():
        name += f" + {accelerator.strip()}"
    return name


def _is_number(value: Any) -> bool:
    try:
        return not pd.isna(value) and float(value) == float(value)
    except (TypeError, ValueError):
        return False


def raw(frame: pd.DataFrame, field_name: str) -> pd.Series:
    """A list-valued field (``metrics.latency_ms.samples``...) for every row, read from ``path``.

    Rows whose record lacks the field get ``None``. The index matches ``frame``.
    """
    values: dict[Any, Any] = {}
    for index, path in frame["path"].items():
        node: Any = records.read(path)
        for key in field_name.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        values[index] = node if isinstance(node, list) else None
    return pd.Series(values, index=frame.index, dtype="object", name=field_name)


def record_for(frame: pd.DataFrame, run_id: str) -> dict[str, Any]:
    """The full record (raw arrays included) of one run in ``frame``."""
    matches = frame.loc[frame["run_id"] == run_id, "path"]
    if matches.empty:
        raise KeyError(f"no run {run_id} in this frame")
    return records.read(matches.iloc[0])
