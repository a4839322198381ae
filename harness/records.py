"""Run records: one schema-validated JSON file per run, written atomically.

A record is written to a temp file in the target folder, flushed, fsynced and
renamed into place, so a reader (or a crash) never sees half a record. Records are
never rewritten: each run gets a unique id and file name.

JSON has no NaN or Infinity (Python's ``json`` would write bare ``NaN`` tokens that
strict parsers, jq and browsers reject), and a non-finite figure is never a
measurement. The writer therefore replaces each one with ``null`` and names it in
``non_finite`` (``{"metrics.mfu": "NaN"}``). When a required figure was the non-finite
one (a latency percentile), the record would break the schema: the run becomes
``failed`` with a reason naming the keys, and its metrics move to ``rejected_metrics``
so nothing measured is lost.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA_ID = "harness.record/1.1"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The record JSON Schema shipped in the package."""
    return json.loads(resources.files("harness").joinpath("record.schema.json").read_text())


def validate(record: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``record`` breaks the schema.

    jsonschema is imported here, not with the module: the CLI imports this module on its
    way to ``--help`` and the precheck, which never validate a record (0.3 s saved there).
    """
    import jsonschema

    jsonschema.validate(record, schema())


def new_run_id() -> str:
    return uuid.uuid4().hex


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "run"


def file_name(record: dict[str, Any]) -> str:
    """``<UTC time>_<scenario>_<backend>_<run id prefix>.json``: sortable and unique."""
    stamp = record["created"].replace("-", "").replace(":", "")[:15]
    return f"{stamp}_{_slug(record['scenario']['name'])}_{_slug(record['backend']['name'])}_{record['run_id'][:8]}.json"


def finite(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every NaN/Infinity replaced by ``None``, named in ``non_finite``."""
    found: dict[str, str] = {}

    def clean(value: Any, path: str) -> Any:
        if getattr(value, "shape", None) == () and hasattr(value, "item"):
            value = value.item()  # numpy scalars: plain Python numbers, checked like any other
        if isinstance(value, float) and not math.isfinite(value):
            found[path] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            return None
        if isinstance(value, dict):
            return {key: clean(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item, f"{path}[{index}]") for index, item in enumerate(value)]
        return value

    out = clean(record, "")
    if found:
        out["non_finite"] = {**(record.get("non_finite") or {}), **found}
    return out


def _schema_safe(record: dict[str, Any]) -> dict[str, Any]:
    """A sanitized record that breaks the schema only through its nulls: status failed, metrics kept aside."""
    import jsonschema

    try:
        validate(record)
        return record
    except jsonschema.ValidationError:
        if not record.get("non_finite"):
            raise
    keys = ", ".join(sorted(record["non_finite"]))
    out = {**record, "status": "failed", "metrics": {}, "rejected_metrics": record.get("metrics") or {}}
    out["reason"] = (
        f"non-finite measurement ({keys}) written as null; the run's figures are unusable "
        f"(fix: rerun; if it repeats, the backend returns NaN/Infinity: report it)"
        + (f"; before: {record['status']}: {record['reason']}" if record.get("reason") else "")
    )
    return out


def write(record: dict[str, Any], results_dir: str | os.PathLike[str]) -> Path:
    """Validate ``record`` and write it atomically under ``results_dir``; return its path.

    NaN and Infinity become ``null`` and are listed in ``non_finite`` (see the module doc);
    ``record`` itself is updated to what was written, so the caller shows and exits with that.
    """
    written = _schema_safe(finite(record))
    validate(written)
    record.clear()
    record.update(written)
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name(record)
    write_atomic(target, json.dumps(record, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
    return target


def write_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` so no reader ever sees part of it.

    A uniquely named temp file in the same folder (so concurrent writers never share
    one) is written, flushed and fsynced, then renamed over ``target``; the folder is
    fsynced so the rename survives a power cut. On any error the temp file is removed.
    """
    folder = target.parent
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=target.suffix, dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable: a record written is not lost to a power cut."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def read(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
