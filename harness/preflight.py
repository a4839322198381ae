"""Preflight: what a run would fail on, found before any model is built or measured.

A mistake that surfaces after a ten-minute measurement costs the measurement; one that
surfaces as a traceback in a backend gets blamed on the wrong plugin. So the CLI runs
these checks on every job of a command line (a sweep is refused before its first
job) and again in front of each job, in its own process, before the host lock and the
run process. Each problem is a :class:`harness.errors.ConfigError`: one line naming
the problem and the fix, exit code 2, no record.

- **config keys**: an unknown top-level key (``+result_dir=...``) names the nearest
  valid one;
- **outputs**: ``results_dir`` and the cache folder exist or can be created, take a
  small probe write, and have room (a file in the way, a read-only or a full
  filesystem are found here, not after measuring);
- **model**: a checkpoint folder's config.json and safetensors headers, its family and
  weight shapes (:func:`harness.models.check_folder`); hidden size divisible by the
  heads, every ``*seq_len`` within the position embeddings, a vocabulary that covers
  the tokenizer;
- **memory**: every ``*batch_size`` against a lower bound of the memory the run needs
  and the memory this host (or cgroup, or ``launcher.memory_limit_mb``) has;
- **data**: the dataset kind fits the model family (text vs images), a ``files``
  dataset's schema reads, and its classes fit the model's ``num_labels``;
- **threads**: thread and stream counts above the cores this process may use are
  *clamped* to them with a warning (:func:`bound_threads`);
- **host lock**: the lock file opens safely (no planted symlink).

Backend availability is probed later, in the run process but before the host lock is
taken (:mod:`harness.launcher`), so an uninstalled backend answers in seconds and
still leaves its ``unavailable`` record.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from harness.errors import ConfigError
from harness.families import family

#: The keys the primary config may have at the top level.
TOP_LEVEL_KEYS = ("backend", "scenario", "model", "dataset", "results_dir", "cache_dir", "hardware", "overwrite", "launcher", "tune")
#: Free space below which an output folder counts as full.
MIN_FREE_BYTES = {"results_dir": 4 * 2**20, "cache_dir": 64 * 2**20}
#: Bytes of the probe written into each output folder.
_PROBE_BYTES = 4096


def run(spec: Any, memory_limit_mb: Optional[int], host_lock: bool) -> tuple[Any, list[str]]:
    """Every check of a validated spec, cheapest first (:func:`check_top_level` runs on
    the composed config before it is typed); returns the spec with thread counts bounded
    and the warnings to show. Raises :class:`ConfigError` for the first problem."""
    check_outputs(spec)
    model = model_config(spec.model)
    check_model(spec, model)
    check_memory(spec, memory_limit_mb, model)
    check_dataset(spec, model)
    if host_lock:
        from harness.hostlock import check_lock

        check_lock()
    return bound_threads(spec)


# --- config keys -------------------------------------------------------------------------------


def nearest(key: str, valid: Iterable[str]) -> Optional[str]:
    """The valid key ``key`` is most likely a typo of, if any is close."""
    found = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return found[0] if found else None


def check_top_level(keys: Iterable[str]) -> None:
    """Refuse a top-level key the harness does not read: a typo there (``+result_dir=``)
    would otherwise be accepted and the record written somewhere else."""
    for key in keys:
        if key in TOP_LEVEL_KEYS:
            continue
        guess = nearest(str(key), TOP_LEVEL_KEYS)
        hint = f"did you mean {guess}? " if guess else ""
        raise ConfigError(f"unknown top-level config key '{key}'", f"{hint}remove +{key}=...; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")


# --- outputs ---------------------------------------------------------------------------------------


def check_outputs(spec: Any) -> None:
    """``results_dir`` and the artifact cache folder take writes and have room."""
    from harness.cache import cache_root

    check_writable(Path(spec.results_dir), "results_dir")
    check_writable(cache_root(spec.cache_dir), "cache_dir")


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` if needed, write, flush and remove a small probe file in it, and
    check its filesystem has :data:`MIN_FREE_BYTES` free."""
    fix = f"{key}=<a folder you can write, on a filesystem with free space>"
    existing = _existing_ancestor(folder)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{key} '{folder}' cannot be a folder: '{existing}' is a file", fix)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {key} '{folder}': {_why(exc)}", fix) from None
    probe = folder / f".harness-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, b"\0" * _PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"{key} '{folder}' is not writable: {_why(exc)}", fix) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES[key]:
        raise ConfigError(
            f"{key} '{folder}' is on a full filesystem ({free / 2**20:.1f} MiB free)", f"free some space, or {key}=<a folder on another filesystem>"
        )


def _existing_ancestor(path: Path) -> Optional[Path]:
    """``path`` or its nearest ancestor that exists (a file there blocks the folder)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the filesystem is full (No space left on device)"
    if exc.errno == errno.EDQUOT:
        return "the disk quota is exhausted"
    return exc.strerror or type(exc).__name__


# --- model -----------------------------------------------------------------------------------------


def model_folder(model: Any) -> Optional[Path]:
    """The checkpoint folder a run will load (``model.path``, or ``model.checkpoint=PATH``)."""
    folder = model.checkpoint if model.checkpoint not in (None, "", "auto") else model.path
    return Path(folder).expanduser() if folder else None


def model_config(model: Any) -> tuple[dict[str, Any], str]:
    """The transformers config the run's model will have, and where it comes from."""
    from harness.models import check_folder

    folder = model_folder(model)
    if folder is not None:
        if not folder.exists():
            key = "model.path" if folder == Path(model.path or "").expanduser() else "model.checkpoint"
            raise ConfigError(f"{key} '{folder}' does not exist", "point it at a folder written by save_pretrained")
        return check_folder(folder, model.family), f"the checkpoint {folder}"
    defaults = family(model.family).config_defaults
    return {**defaults, **model.config, "num_labels": model.num_labels}, f"model '{model.name}'"


def _scenario_values(options: Any, suffix: str) -> Iterator[tuple[str, Any]]:
    """``(scenario.key, value)`` for every option named ``suffix`` or ``*_suffix``, nested
    sections included (``scenario.pruning.finetune_seq_len``) unless they say they are off
    (``enabled`` false): a switched-off stage's shapes are never used."""
    if not dataclasses.is_dataclass(options) or getattr(options, "enabled", True) is False:
        return
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if dataclasses.is_dataclass(value):
            for key, inner in _scenario_values(value, suffix):
                yield f"{field.name}.{key}", inner
        elif (field.name == suffix or field.name.endswith("_" + suffix)) and isinstance(value, int) and not isinstance(value, bool):
            yield field.name, value


def check_model(spec: Any, model: Optional[tuple[dict[str, Any], str]] = None) -> None:
    """Shapes the model cannot take, found before it is built (``model``: the result of
    :func:`model_config`, computed here when not given)."""
    config, source = model or model_config(spec.model)
    checks = family(spec.model.family).checks
    if "heads" not in checks:
        return
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        lower, upper = hidden - hidden % heads, hidden - hidden % heads + heads
        raise ConfigError(
            f"hidden_size={hidden} of {source} is not a multiple of num_attention_heads={heads}",
            f"model.config.hidden_size={lower or upper} (or {upper}), or another model.config.num_attention_heads",
        )
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int):
        for key, value in _scenario_values(spec.scenario_options, "seq_len"):
            if value > positions:
                raise ConfigError(
                    f"scenario.{key}={value} is longer than the {positions} positions of {source} (max_position_embeddings)",
                    f"scenario.{key}=<at most {positions}>" + ("" if model_folder(spec.model) else f", or model.config.max_position_embeddings={value}"),
                )
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and not _has_own_tokenizer(spec.model) and spec.dataset.kind in ("sentiment", "files"):
        from harness.data import vocabulary

        needed = len(vocabulary())
        if vocab < needed:
            raise ConfigError(
                f"vocab_size={vocab} of {source} is smaller than the {needed} ids of the embedded tokenizer", f"model.config.vocab_size=<at least {needed}>"
            )


def _has_own_tokenizer(model: Any) -> bool:
    folder = model_folder(model)
    return folder is not None and (folder / "tokenizer.json").is_file()


# --- memory ----------------------------------------------------------------------------------------


def available_memory_bytes(memory_limit_mb: Optional[int] = None) -> int:
    """What a run may allocate here: the host's available memory, capped by the cgroup's
    limit (containers, Slurm jobs) and ``launcher.memory_limit_mb``."""
    import psutil

    limits = [psutil.virtual_memory().available]
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            limits.append(max(0, int(text) - used))
    except (OSError, ValueError):
        pass
    if memory_limit_mb:
        limits.append(memory_limit_mb * 2**20)
    return min(limits)


def memory_lower_bound(family_name: str, config: dict[str, Any], batch: int, seq_len: int, image_size: int) -> int:
    """Bytes a forward pass of one batch needs at least (the family's own bound,
    :attr:`harness.families.ModelFamily.memory`; 0 for a family without one). Real runs
    need several times more, so a batch refused by this bound can never fit; one that
    passes may still not."""
    bound = family(family_name).memory
    return bound(config, batch, seq_len, image_size) if bound is not None else 0


def check_memory(spec: Any, memory_limit_mb: Optional[int], model: Optional[tuple[dict[str, Any], str]] = None) -> None:
    """Refuse a batch size whose lower bound (:func:`memory_lower_bound`) is beyond the
    memory this run may use; name the largest that could fit."""
    batches = list(_scenario_values(spec.scenario_options, "batch_size"))
    if not batches:
        return
    config, source = model or model_config(spec.model)
    seq_len = max([v for _, v in _scenario_values(spec.scenario_options, "seq_len")] or [128])
    available = available_memory_bytes(memory_limit_mb)
    for key, batch in batches:
        needed = memory_lower_bound(spec.model.family, config, batch, seq_len, spec.dataset.image_size)
        if needed <= available:
            continue
        base = memory_lower_bound(spec.model.family, config, 0, seq_len, spec.dataset.image_size)
        per_sample = max(1, memory_lower_bound(spec.model.family, config, 1, seq_len, spec.dataset.image_size) - base)
        fits = max(0, (available - base) // per_sample)
        raise ConfigError(
            f"scenario.{key}={batch} needs at least {_size(needed)} for {source}, more than the {_size(available)} this run may use",
            f"scenario.{key}=<well below {fits}: this is a lower bound>" if fits else "a smaller model or a machine with more memory",
        )


def _size(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            value = count / scale
            return f"{value:.3g} {unit}" if value < 1e6 else f"{value:.2e} {unit}"
    return f"{count} bytes"


# --- data ------------------------------------------------------------------------------------------


def check_dataset(spec: Any, model: Optional[tuple[dict[str, Any], str]] = None) -> None:
    """The data fits the model: text for BERT, images for ResNet, a text corpus for decoder
    LLMs, and no more classes than the model's classification head has."""
    from harness.data import TASKS, check_labels

    if spec.dataset.kind == "files" and spec.dataset.path and not Path(spec.dataset.path).expanduser().exists():
        raise ConfigError(f"dataset.path '{spec.dataset.path}' does not exist", "point dataset.path at a csv/tsv/jsonl/parquet file or a folder")
    task = TASKS.get(spec.dataset.kind)
    fits = family(spec.model.family).tasks
    if task is not None and task not in fits:
        wanted = " or ".join(sorted(fits))
        kinds = [f"dataset={kind}" for kind, its in TASKS.items() if its in fits]
        raise ConfigError(
            f"model.family={spec.model.family} does {wanted} but dataset '{spec.dataset.name}' is {task}",
            f"{' or '.join(kinds) or 'another dataset'}, or a model of the other family",
        )
    config, source = model or model_config(spec.model)
    from harness.models import num_labels_of

    check_labels(spec.dataset, num_labels_of(config, spec.model.num_labels), source)


# --- threads ---------------------------------------------------------------------------------------


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a Slurm or container cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def bound_threads(spec: Any) -> tuple[Any, list[str]]:
    """Clamp thread-count options above the usable cores to that many.

    Which options: fields declared with :func:`harness.config.cores_bound` (the built-in
    backends' ``threads``, ``intra_op_threads``, ``inter_op_threads``, ``num_streams``;
    a plugin opts in the same way). Clamped, not refused: the same command runs on machines with different core
    counts (a sweep validated on a login node, run on a compute node), and more
    threads than cores only oversubscribes them (and grows memory per thread), never
    measures anything more. The record's ``backend.options`` shows the value used;
    ``config`` keeps the one asked for.
    """
    options = spec.backend_options
    if not dataclasses.is_dataclass(options):
        return spec, []
    cores = usable_cores()
    changes, warnings = {}, []
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        bounded = field.metadata.get("bounded_by") == "cores"
        if bounded and isinstance(value, int) and not isinstance(value, bool) and value > cores:
            changes[field.name] = cores
            warnings.append(f"backend.{field.name}={value} is more than the {cores} cores this run may use; using {cores} (0 lets the library choose)")
    if not changes:
        return spec, []
    return dataclasses.replace(spec, backend_options=dataclasses.replace(options, **changes)), warnings  # type: ignore[type-var]
