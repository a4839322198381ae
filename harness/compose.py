"""Hydra composition and job validation: a command line's overrides -> a validated :class:`Job`.

The harness composes its config with Hydra's public compose API (``initialize_config_module``
+ ``compose``) over ``conf/`` plus the folders plugins contribute, exactly as the
``harness`` Hydra app does. :func:`validate` turns one composed config into a
:class:`Job`: the typed :class:`~harness.config.RunSpec` (:func:`harness.spec.build_spec`),
the launcher options, and what the preflight checks found. It runs once per job: the
command-line check (:mod:`harness.precheck`) validates every job before anything runs and
the run reuses that result.

``scenario`` is a config group in the defaults list (``scenario: default``), so
``scenario=bert_int8`` selects one; the card's ``+scenario=bert_int8`` means the same and
is rewritten to it (:func:`normalise`) before Hydra sees it.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional

from harness import preflight, stages
from harness.checkpoints import RECIPES
from harness.config import JobInfo, RunSpec, TrainRecipe
from harness.errors import ConfigError
from harness.launcher import LauncherOptions
from harness.registry import Registry
from harness.spec import build_spec
from harness.training.options import TrainingOptions
from harness.validation import typed

GROUPS = ("backend", "scenario", "model", "dataset")
CONFIG_MODULE = "harness.conf"
#: Config groups that are in the primary defaults list yet may be given with ``+`` (the card's form).
PLUS_GROUPS = ("scenario",)


def debug_enabled() -> bool:
    """``HARNESS_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``: show tracebacks instead of one line."""
    return any(os.environ.get(name, "") not in ("", "0") for name in ("HARNESS_DEBUG", "HYDRA_FULL_ERROR"))


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines; keep the informative ones, joined."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return "; ".join(ln.rstrip(".") for ln in kept) or type(exc).__name__


def normalise(overrides: list[str]) -> list[str]:
    """``+scenario=x`` -> ``scenario=x``: the group is in the defaults list, and Hydra refuses
    to *add* a group that is already there; both spellings select the same config."""
    out = []
    for item in overrides:
        for group in PLUS_GROUPS:
            if item.startswith(f"+{group}=") or item.startswith(f"+{group}@"):
                item = item[1:]
        out.append(item)
    return out


def searchpath_overrides(searchpath: list[str]) -> list[str]:
    """The override that adds the plugins' config folders to Hydra's search path."""
    return [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []


def _group_files(entry: str, group: str) -> list[Any]:
    """The ``.yaml`` files of ``group`` under one Hydra search-path entry (pkg:// or file://)."""
    if entry.startswith("pkg://"):
        try:
            folder: Any = resources.files(entry[len("pkg://") :]).joinpath(group)
        except ModuleNotFoundError:
            return []
    else:
        folder = Path(entry[len("file://") :] if entry.startswith("file://") else entry) / group
    if not folder.is_dir():
        return []
    return sorted((item for item in folder.iterdir() if item.name.endswith(".yaml")), key=lambda item: item.name)


def _list_options(entry: str, group: str) -> set[str]:
    """Config names of ``group`` under one Hydra search-path entry (pkg:// or file://)."""
    return {item.name[: -len(".yaml")] for item in _group_files(entry, group)}


def group_fingerprint(searchpath: list[str], group: str) -> list[list[Any]]:
    """Where, how large and how recent every ``group`` file is: a key for what was
    composed from them (any edit, added or removed file changes it)."""
    out: list[list[Any]] = []
    for entry in [f"pkg://{CONFIG_MODULE}", *searchpath]:
        for item in _group_files(entry, group):
            try:
                st = Path(str(item)).stat()
                out.append([str(item), st.st_size, st.st_mtime_ns])
            except OSError:  # not a plain file (a zipped package): its name is all the key gets
                out.append([entry, item.name])
    return out


def group_options(searchpath: list[str]) -> dict[str, list[str]]:
    """Every option of each config group, from the core's conf/ and plugins' folders."""
    entries = [f"pkg://{CONFIG_MODULE}", *searchpath]
    return {g: sorted(set().union(*(_list_options(e, g) for e in entries))) for g in GROUPS}


@contextlib.contextmanager
def hydra_context() -> Iterator[None]:
    """Hydra's compose API initialised on ``harness.conf`` (inside a running Hydra app,
    that app's own initialisation is used and left as it was)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()


def compose(overrides: list[str], searchpath: list[str], hydra_config: bool = False) -> Any:
    """The composed config of ``overrides`` (inside :func:`hydra_context`). With
    ``hydra_config`` it is set up as in a running app: ``${hydra:...}`` resolves and the
    ``hydra`` node is removed, so the job sees what Hydra's task function would."""
    from hydra import compose as hydra_compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with stages.timed("compose"):
        cfg = hydra_compose(config_name="config", overrides=[*normalise(overrides), *searchpath_overrides(searchpath)], return_hydra_config=hydra_config)
        if hydra_config:
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
    return cfg


def typo_hint(exc: BaseException, job: list[str], searchpath: list[str]) -> str:
    """`` (fix: did you mean scenario.batch_size?)`` when Hydra could not override a key
    that is a typo of an existing one; composes the job without that override to see
    the keys next to it (inside :func:`hydra_context`)."""
    from omegaconf import OmegaConf

    match = re.search(r"Could not override '([^']+)'", str(exc))
    if match is None:
        return ""
    key = match.group(1)
    rest = [o for o in job if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node: Any = OmegaConf.to_container(compose(rest, searchpath), resolve=False)
        for part in key.split(".")[:-1]:
            node = node[part]
        guess = preflight.nearest(key.rsplit(".", 1)[-1], [str(k) for k in node]) if isinstance(node, dict) else None
    except Exception:
        return ""
    return f" (fix: did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{guess}?)" if guess else ""


def recipe_for(family: str, searchpath: Optional[list[str]] = None) -> Optional[TrainRecipe]:
    """The train recipe of ``family`` (``model.checkpoint=auto``), composed from its
    ``conf/scenario/`` YAML exactly as ``harness scenario=<recipe>`` composes it; None for
    a family without one."""
    from omegaconf import OmegaConf

    name = RECIPES.get(family)
    if name is None:
        return None
    with hydra_context():
        cfg = compose([f"scenario={name}"], searchpath or [])
    section: dict[str, Any] = OmegaConf.to_container(cfg.scenario, resolve=True)  # type: ignore[assignment]
    section.pop("name", None)
    section.pop("kind", None)
    return TrainRecipe(name, typed(TrainingOptions, section, "scenario"))


@dataclass
class Job:
    """One validated job: what to run, how to launch it, and what the checks said."""

    spec: RunSpec
    launcher: LauncherOptions
    overwrite: bool = False
    warnings: list[str] = field(default_factory=list)


def _bool_option(cfg: Any, key: str) -> bool:
    value = cfg.get(key, False)
    if isinstance(value, bool) or value is None:
        return bool(value)
    raise ConfigError(f"invalid value for {key}: {value!r} is not true or false", f"{key}=true or {key}=false")


def validate(cfg: Any, registry: Registry, searchpath: Optional[list[str]] = None) -> Job:
    """A composed config as the run will see it, checked once.

    Raises :class:`harness.errors.ConfigError` with one line for a wrong type, an
    out-of-range value, an unknown key or scenario kind, or anything the preflight
    checks (:mod:`harness.preflight`) find the run would fail on.
    """
    with stages.timed("config_check"):
        preflight.check_top_level(cfg.keys())
        spec = build_spec(cfg, registry, recipes=lambda family: recipe_for(family, searchpath))
        options = typed(LauncherOptions, cfg.get("launcher") or {}, "launcher")
        overwrite = _bool_option(cfg, "overwrite")
        spec, warnings = preflight.run(spec, options.memory_limit_mb, options.host_lock)
    return Job(spec, options, overwrite, warnings)


def for_job(job: Job, num: Optional[int], overrides: list[str]) -> Job:
    """``job`` numbered as a sweep job (its key is the spec's)."""
    from dataclasses import replace

    info = JobInfo(key=job.spec.job.key, num=num, overrides=tuple(overrides))
    return replace(job, spec=replace(job.spec, job=info))
