"""What makes two runs the same experiment: one definition for sweeps, reports and the CI gate.

A run's resolved config says everything about what it measured, plus a few keys that
only say *where* or *how* this particular run happened. Those **run-local keys**
(:data:`RUN_LOCAL_KEYS`) never separate two experiments:

- ``results_dir``, ``cache_dir``, ``overwrite``: where files go, whether to redo a job;
- ``launcher.*``: isolation, timeouts, memory cap, host lock (bookkeeping, not workload);
- ``tune.*``: which tuning study a trial belongs to and how it is scored (docs/tuning.md),
  so a tuned configuration and the same configuration run alone are one experiment;
- ``scenario.distributed.node_rank`` / ``rdzv_endpoint`` / ``timeout_s``: which node of
  one multi-node run this process is, where the nodes met and how long they waited for
  each other; every node runs the same experiment.

:func:`job_config` (the config minus those keys) is what a sweep's ``job_key`` hashes,
so resuming a sweep and grouping a report agree on "same job". A report row adds two
rules on top (:func:`identity_config`):

- the machine is its own dimension (``hardware.*`` goes to the report's ``machine``
  column), so one configuration run on two machines compares side by side;
- machine-local paths (:data:`PATH_KEYS`: ``model.path``, ``model.checkpoint``,
  ``dataset.path``, ``scenario.teacher``) become ``<folder or file name>@<content hash>``
  using the digests the run wrote into ``record["inputs"]`` (:func:`portable_inputs`), so
  the same checkpoint copied to two machines is one model, and two different checkpoints
  in folders of the same name are two.

Everything else in the config identifies the experiment: any other difference (a
graph-optimisation level, a quantization mode, a step count, a seed) makes another row.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

#: Dotted config keys of the core that change where or how one run happens, never what it
#: measures. A scenario kind adds its own (``Scenario.run_local_keys``), which every
#: record carries in ``identity.run_local_keys``.
RUN_LOCAL_KEYS: tuple[str, ...] = (
    "results_dir",
    "cache_dir",
    "overwrite",
    "launcher",
    "tune",
)

#: The kind keys records written before ``identity.run_local_keys`` existed left out
#: (the training kind's rendezvous keys, then the only ones).
LEGACY_KIND_KEYS: tuple[str, ...] = (
    "scenario.distributed.node_rank",
    "scenario.distributed.rdzv_endpoint",
    "scenario.distributed.timeout_s",
)

#: Config sections that describe the machine: a report's ``machine`` column, not its rows.
MACHINE_KEYS: tuple[str, ...] = ("hardware",)

#: Config keys that may hold a machine-local file or folder path (``auto``/null are not paths).
PATH_KEYS: tuple[str, ...] = ("model.path", "model.checkpoint", "dataset.path", "scenario.teacher")

#: Values of :data:`PATH_KEYS` that name no file: kept as they are.
NOT_PATHS = frozenset({"auto", "none", "null", ""})

_CHUNK = 1 << 20


def without(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A deep copy of ``config`` without the dotted ``keys`` (absent keys are ignored)."""
    out = copy.deepcopy(dict(config))
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def package_versions(names: Iterable[str], missing: str | None = "missing") -> dict[str, str]:
    """Installed versions of ``names`` from the package metadata (no import of the package):
    a package that is not installed gets ``missing``, or is left out when that is None."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing is not None:
                out[name] = missing
    return out


def harness_version() -> str:
    """The installed harness's version, for cache keys (read from the package metadata, so
    that modules below the ``harness`` package itself need not import it); ``unknown`` when
    run from a source tree that was never installed."""
    return package_versions(["harness"], missing="unknown")["harness"]


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


def job_config(config: Mapping[str, Any], kind_keys: Iterable[str] = LEGACY_KIND_KEYS) -> dict[str, Any]:
    """The config minus :data:`RUN_LOCAL_KEYS` and the kind's run-local ``kind_keys``
    (full dotted keys): what a sweep job key hashes."""
    return without(config, (*RUN_LOCAL_KEYS, *kind_keys))


def job_key(config: Mapping[str, Any], kind_keys: Iterable[str] = LEGACY_KIND_KEYS) -> str:
    """A stable 20-hex-digit key of :func:`job_config`: the same job on every node of a
    multi-node run, in a resumed sweep and in a report row."""
    return content_key(job_config(config, kind_keys))


def kind_keys_of(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The run-local keys a record's scenario kind declared (older records: the legacy ones)."""
    declared = get(record, "identity.run_local_keys")
    return tuple(str(k) for k in declared) if isinstance(declared, list) else LEGACY_KIND_KEYS


def get(mapping: Mapping[str, Any] | None, dotted: str) -> Any:
    """``mapping['a']['b']`` for ``'a.b'``; None when any part is missing."""
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _set(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = mapping
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            return
        node = child
    if leaf in node:
        node[leaf] = value


def is_path_value(value: Any) -> bool:
    """True for a string that names a file or folder (not ``auto``, not empty)."""
    return isinstance(value, str) and value.strip().lower() not in NOT_PATHS


def content_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over a file's bytes, or over a folder's files (relative names, sizes, bytes).

    Hidden files and folders (``.git``, ``.cache``) are left out: they are not the model.
    Raises ``OSError`` when the path cannot be read.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    digest = hashlib.sha256()
    files = (
        [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    )
    for file in files:
        name = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def portable_inputs(config: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{dotted key: {"name", "sha256"}}`` for every :data:`PATH_KEYS` value naming a readable path.

    Written into each record at run time, where the files are, so a report on another
    machine can tell models apart by content instead of by an absolute path. Paths that
    cannot be read are left out (the run itself reports that problem).
    """
    found: dict[str, dict[str, str]] = {}
    for key in PATH_KEYS:
        value = get(config, key)
        if not is_path_value(value):
            continue
        try:
            found[key] = {"name": Path(str(value).rstrip("/")).name or str(value), "sha256": content_digest(value)}
        except OSError:
            continue
    return found


def portable_token(value: Any, given: Mapping[str, Any] | None) -> Any:
    """How a path value shows in an identity: ``name@<16 hex>`` of its content when the
    record carries the digest, else just the file or folder name (older records)."""
    if not is_path_value(value):
        return value
    if isinstance(given, Mapping) and given.get("sha256"):
        return f"{given.get('name') or Path(str(value)).name}@{str(given['sha256'])[:16]}"
    return Path(str(value).rstrip("/")).name or str(value)


def identity_config(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's config as a report row knows it: run-local and machine keys removed,
    machine-local paths replaced by :func:`portable_token`."""
    config: Mapping[str, Any] = record["config"] if isinstance(record.get("config"), Mapping) else {}
    kept = without(job_config(config, kind_keys_of(record)), MACHINE_KEYS)
    inputs: Mapping[str, Any] = record["inputs"] if isinstance(record.get("inputs"), Mapping) else {}
    for key in PATH_KEYS:
        value = get(kept, key)
        if is_path_value(value):
            _set(kept, key, portable_token(value, inputs.get(key)))
    return kept


def canonical(value: Any) -> str:
    """Stable JSON text of ``value`` (keys sorted): equal configs give equal text."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def key_of(value: Any, length: int = 16) -> str:
    """A short hex hash of :func:`canonical` text."""
    return hashlib.sha256(canonical(value).encode()).hexdigest()[:length]


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves of a nested mapping; lists become their canonical JSON text.

    ``{"backend": {"providers": ["CPU"]}}`` -> ``{"backend.providers": '["CPU"]'}``.
    An empty mapping is a leaf of its own (``{}``), so it still differs from a missing one.
    """
    if isinstance(config, Mapping):
        if not config and prefix:
            return {prefix: "{}"}
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(config, (list, tuple)):
        return {prefix: canonical(list(config))}
    return {prefix: config}
