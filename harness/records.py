"""Run records: one schema-validated JSON file per run, written atomically.

A record is written to a temp file in the target folder, flushed, fsynced and
renamed into place, so a reader (or a crash) never sees half a record. Records are
never rewritten: each run gets a unique id and file name.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_ID = "harness.record/1"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The record JSON Schema shipped in the package."""
    return json.loads(resources.files("harness").joinpath("record.schema.json").read_text())


def validate(record: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``record`` breaks the schema."""
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


def write(record: dict[str, Any], results_dir: str | os.PathLike[str]) -> Path:
    """Validate ``record`` and write it atomically under ``results_dir``; return its path."""
    validate(record)
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file_name(record)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return target


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
