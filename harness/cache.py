"""The artifact cache: exported ONNX files, compressed models, engines, checkpoints.

Lives in ``$HARNESS_CACHE`` or, by default, the user's cache folder
(``$XDG_CACHE_HOME/harness`` or ``~/.cache/harness``). Entries are keyed by a hash of
everything that determines their content, so a changed input never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override``, else ``$HARNESS_CACHE``, else the user cache folder."""
    if override:
        root = Path(override)
    elif os.environ.get("HARNESS_CACHE"):
        root = Path(os.environ["HARNESS_CACHE"])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "harness"
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_key(*parts: Any) -> str:
    """A 20-hex-digit key over JSON-serialisable parts (dicts are key-sorted)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            digest.update(part)
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


def entry(kind: str, key: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Folder for one cache entry, e.g. ``<cache>/onnx/<key>/`` (created)."""
    folder = cache_dir(root) / kind / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder
