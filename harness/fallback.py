"""A record that cannot go to ``results_dir`` goes somewhere else, never nowhere.

Preflight (:mod:`harness.preflight`) finds a ``results_dir`` that is a file, read-only
or full before anything runs. A disk can still fill up *during* a run (another job's
checkpoints, a log); then the measurement is done and only its record is homeless.
:func:`write_record` tries ``results_dir``, then ``<cache>/unsaved-records/``, then a
fresh private folder under ``$TMPDIR``, and says which it used, so the CLI can name the
place and exit with :data:`harness.errors.RECORD_FALLBACK_EXIT`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from harness import records


def write_record(record: dict[str, Any], results_dir: str | os.PathLike[str], cache_dir: Optional[str] = None) -> tuple[Path, Optional[str]]:
    """Write ``record`` (atomically, :func:`harness.records.write`) and return
    ``(path, problem)``: ``problem`` is None when it went to ``results_dir``, else one line
    saying why not. Raises the original ``OSError`` only if every place failed."""
    try:
        return records.write(record, results_dir), None
    except OSError as exc:
        problem = f"could not write the record to {results_dir}: {exc.strerror or exc}"
        failure = exc
    for folder in _fallback_folders(cache_dir):
        try:
            return records.write(record, folder()), problem
        except OSError:
            continue
    raise failure


def _fallback_folders(cache_dir: Optional[str]) -> list[Any]:
    """Places to try, each a function so that a failure to create one is just a miss."""
    from harness.cache import cache_root

    return [
        lambda: cache_root(cache_dir) / "unsaved-records",
        lambda: Path(tempfile.mkdtemp(prefix="harness-unsaved-records-")),  # private (0700), unpredictable
    ]
