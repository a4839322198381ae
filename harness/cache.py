"""The artifact cache: exported ONNX files, compressed models, engines, checkpoints.

Lives in ``$HARNESS_CACHE`` or, by default, the user's cache folder
(``$XDG_CACHE_HOME/harness`` or ``~/.cache/harness``). Entries are keyed by a hash of
everything that determines their content, so a changed input never reuses a stale file.

A cache that can poison every later run is worse than none, so entries are written
and read one way, here:

- **written atomically**: a file goes to a unique temp sibling and is renamed into
  place (:func:`atomic_write`); a folder entry is built in a unique staging folder
  (:func:`staging`) and renamed into place whole (:func:`publish`). Two runs filling
  the same entry at once never see each other's half-written files.
- **sealed**: a checksum (sha256 and size) is stored beside the entry: ``<file>.sha256``
  for one file (:func:`seal`), ``checksums.json`` listing every file of a folder entry
  (:func:`seal_folder`).
- **verified on read** (:func:`verified`, :func:`folder_verified`): a truncated file,
  flipped bytes or a missing checksum fail, and the caller rebuilds the entry after one
  warning line (:func:`discard`). A later run therefore heals the cache itself.
- **stamped once verified** (:func:`stamp`, :func:`stamped`): re-hashing a 400 MB entry on
  every run costs seconds, so a folder that passed a full check gets a stamp with the
  size, inode, mtime and ctime of each of its files. While none of them changed, the
  check is not repeated. Any write to a file (a flipped byte, a truncation, a copy, a
  re-seal, even one that restores the mtime) changes its ctime and voids the stamp; only
  damage below the file system (bit rot on the disk) would go unseen, as it would by
  any cache that does not re-read every byte. A stamp is written only :data:`SETTLED_S`
  after the newest write in the folder: file timestamps come from a coarse clock (one
  tick is 1-10 ms), and a second write within the same tick would keep them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from harness.identity import content_key as content_key  # cache keys and job keys: one hash

#: Checksum file of a one-file entry: ``<name>.sha256`` beside it.
CHECKSUM_SUFFIX = ".sha256"
#: Checksum manifest of a folder entry (every other file of the folder, relative paths).
MANIFEST = "checksums.json"
#: Verification stamps of a folder entry: ``.verified-<purpose>.json`` (never sealed).
STAMP_PREFIX = ".verified-"
#: A stamp is written at least this many seconds after the newest write in its folder
#: (many clock ticks), so that any later write gets a timestamp the stamp does not hold.
SETTLED_S = 0.1
_CHUNK = 1 << 20


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override``, else ``$HARNESS_CACHE``, else the user cache folder."""
    root = cache_root(override)
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """Where the cache root is, without creating it (for checks before a run)."""
    if override:
        root = Path(override)
    elif os.environ.get("HARNESS_CACHE"):
        root = Path(os.environ["HARNESS_CACHE"])
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "harness"
    return root.expanduser()


def entry(kind: str, key: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Folder for one cache entry, e.g. ``<cache>/onnx/<key>/`` (created)."""
    folder = cache_dir(root) / kind / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- writing -------------------------------------------------------------------------------


def temp_sibling(path: Path) -> Path:
    """A unique temp name beside ``path`` (same folder, so a rename is atomic); the
    ``.tmp-`` prefix keeps it out of globs such as ``*.json`` and ``*.onnx``."""
    return path.parent / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"


def atomic_write(path: str | os.PathLike[str], content: Union[bytes, str, Callable[[Path], Any]]) -> Path:
    """Write ``path`` whole or not at all: into a unique temp sibling, flushed to disk,
    then renamed over ``path``.

    ``content`` is the bytes or text, or a function that writes the file at the path
    it is given (``np.save``, an exporter). A failure leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        try:
            os.fsync(handle.fileno())
        except OSError:  # a filesystem without fsync: the rename is still atomic
            pass


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in chunks (entries can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_of(path: Path) -> dict[str, Any]:
    return {"sha256": file_digest(path), "size": path.stat().st_size}


def seal(path: str | os.PathLike[str]) -> None:
    """Store the checksum of ``path`` beside it (``<path>.sha256``)."""
    path = Path(path)
    atomic_write(_checksum_file(path), json.dumps(_checksum_of(path)))


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def seal_folder(folder: str | os.PathLike[str]) -> None:
    """Write :data:`MANIFEST`: the checksum of every file under ``folder``."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not is_stamp(p))
    manifest = {p.relative_to(folder).as_posix(): _checksum_of(p) for p in files}
    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=1))


# --- reading -------------------------------------------------------------------------------


def _matches(path: Path, expected: Any) -> bool:
    if not isinstance(expected, dict):
        return False
    try:
        if path.stat().st_size != expected.get("size"):
            return False  # truncated or grown: no need to hash it
        return file_digest(path) == expected.get("sha256")
    except OSError:
        return False


def verified(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` exists and matches the checksum :func:`seal` stored beside it."""
    path = Path(path)
    try:
        expected = json.loads(_checksum_file(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _matches(path, expected)


def folder_verified(folder: str | os.PathLike[str], required: Iterable[str] = ()) -> bool:
    """Whether ``folder`` has a manifest that lists every ``required`` file and whose
    every file matches its checksum."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or any(name not in manifest for name in required):
        return False
    if stamped(folder, "checksums") is not None:
        return True
    if not all(_matches(folder / name, expected) for name, expected in manifest.items()):
        return False
    stamp(folder, "checksums")
    return True


# --- verification stamps ---------------------------------------------------------------------


def is_stamp(path: Path) -> bool:
    """A stamp, or the temp file of one being written (never part of an entry's content)."""
    return path.name.startswith(STAMP_PREFIX) or (path.name.startswith(".tmp-") and STAMP_PREFIX in path.name)


def _signature(folder: Path) -> dict[str, list[int]]:
    """Size, inode, mtime and ctime (ns) of every file of ``folder`` but its stamps."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not is_stamp(path):
            st = path.stat()
            out[path.relative_to(folder).as_posix()] = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    return out


def _stamp_file(folder: Path, purpose: str) -> Path:
    return folder / f"{STAMP_PREFIX}{purpose}.json"


def stamped(folder: str | os.PathLike[str], purpose: str, context: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """The facts :func:`stamp` recorded when ``folder`` passed the ``purpose`` check in the
    same ``context`` (e.g. the library versions the check ran with), if no file of the
    folder changed since; else None and the caller runs the full check."""
    folder = Path(folder)
    try:
        recorded = json.loads(_stamp_file(folder, purpose).read_text(encoding="utf-8"))
        if recorded.get("context") != (context or {}) or recorded.get("files") != _signature(folder):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    facts = recorded.get("facts")
    return facts if isinstance(facts, dict) else None


def stamp(
    folder: str | os.PathLike[str], purpose: str, context: Optional[dict[str, Any]] = None, facts: Optional[dict[str, Any]] = None, *, wait: bool = False
) -> None:
    """Record that ``folder`` just passed the full ``purpose`` check (see :func:`stamped`).

    Skipped when a file changed under :data:`SETTLED_S` ago (``wait``: sleep until it has
    settled; for an entry just built, where that is nothing beside the build), and when
    the folder cannot be written (a read-only shared cache): the check then simply runs
    again next time.
    """
    folder = Path(folder)
    try:
        files = _signature(folder)
        newest = max((max(sig[2], sig[3]) for sig in files.values()), default=0)
        young = SETTLED_S - (time.time_ns() - newest) / 1e9
        if young > 0 and wait:
            time.sleep(young)
            files = _signature(folder)
        elif young > 0:
            return
        record = {"context": context or {}, "facts": facts or {}, "files": files}
        atomic_write(_stamp_file(folder, purpose), json.dumps(record, indent=1))
    except OSError:
        pass


def discard(path: str | os.PathLike[str], problem: str, warn: Optional[Callable[[str], None]] = None) -> None:
    """Remove a cache entry (file, with its checksum, or folder) that failed verification,
    after one warning line saying what was wrong and that it is rebuilt."""
    path = Path(path)
    (warn or _warn)(f"cache entry {path} {problem}; rebuilding it")
    if path.is_dir() and not path.is_symlink():
        _remove_folder(path)
    else:
        path.unlink(missing_ok=True)
        _checksum_file(path).unlink(missing_ok=True)


def _warn(message: str) -> None:
    from harness import ui

    ui.warning(message)


def _remove_folder(folder: Path) -> None:
    """Remove ``folder`` so that a concurrent reader never sees it half-deleted: it is
    renamed aside first (readers then find no entry), then deleted."""
    aside = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


# --- folder entries --------------------------------------------------------------------------


@contextlib.contextmanager
def staging(kind: str, key: str, root: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A fresh, unique folder beside ``<cache>/<kind>/<key>`` to build that entry in;
    removed when the block ends unless :func:`publish` moved it into place."""
    parent = cache_dir(root) / kind
    parent.mkdir(parents=True, exist_ok=True)
    folder = parent / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(built: Path, final: Path, required: Iterable[str] = (), *, replace: bool = False) -> Path:
    """Seal the folder ``built`` (from :func:`staging`) and rename it to ``final``.

    If another run published a verified ``final`` first, theirs is kept (same key, same
    content) and ``built`` is left for :func:`staging` to remove, unless ``replace`` (a
    new training run's checkpoint replaces the old one); a ``final`` that fails
    verification is always replaced. Returns ``final``.
    """
    required = tuple(required)
    seal_folder(built)
    for _ in range(3):
        try:
            os.replace(built, final)
            return final
        except OSError:  # ``final`` exists and is not empty
            if not replace and folder_verified(final, required):
                return final
            _remove_folder(final)
    os.replace(built, final)
    return final


@dataclass(frozen=True)
class Workspace:
    """Where a backend may write during one run.

    ``cache_dir``: this backend's own artifact cache (``<cache>/backends/<name>/``), kept
    across runs: key what you store there by its inputs (the ONNX file's content, your
    options, the library version). ``workdir``: a fresh folder for this run, removed when
    the run ends.
    """

    cache_dir: Path
    workdir: Path

    @classmethod
    def create(cls, backend: str, root: str | os.PathLike[str] | None = None) -> "Workspace":
        """``<cache>/backends/<backend>/`` (made if missing) and a new ``<cache>/work/<backend>-*`` folder."""
        base = cache_dir(root)
        own = base / "backends" / backend
        own.mkdir(parents=True, exist_ok=True)
        (base / "work").mkdir(parents=True, exist_ok=True)
        return cls(cache_dir=own, workdir=Path(tempfile.mkdtemp(prefix=f"{backend}-", dir=base / "work")))

    def close(self) -> None:
        """Remove the work folder (the backend's cache stays)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
