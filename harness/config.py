"""From composed Hydra config to a validated, typed :class:`RunSpec`.

Each config section is validated against a dataclass: the core's own for ``model``,
``dataset`` and the run settings; the selected backend's ``options_type`` for
``backend``; the selected scenario kind's ``options_type`` for ``scenario``. Plugins
therefore type their own options, and a wrong type or value fails with one line
naming the full key (``scenario.batch_size``) instead of a traceback.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from harness.data import DatasetOptions
from harness.errors import ConfigError
from harness.models import ModelOptions
from harness.registry import Registry

T = TypeVar("T")


def require(condition: bool, key: str, problem: str) -> None:
    """Raise ``ValueError('<key>: <problem>')`` unless ``condition``; used in ``__post_init__``."""
    if not condition:
        raise ValueError(f"{key}: {problem}")


def choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    """Raise a ``ValueError`` naming ``key`` unless ``value`` is one of ``allowed``."""
    require(value in allowed, key, f"'{value}' is not one of {', '.join(allowed)}")


def cores_bound(default: int = 0) -> Any:
    """A dataclass field for a thread or stream count: preflight clamps a value above the
    cores the run may use to that many, with a warning (:func:`harness.preflight.bound_threads`)."""
    return field(default=default, metadata={"bounded_by": "cores"})


_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): ")


def typed(cls: type[T], node: Any, section: str) -> T:
    """Validate ``node`` (a mapping) against dataclass ``cls``; errors name ``section.key``."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node if node is not None else {})
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "?")
        names = _valid_keys(cls, str(key))
        guess = difflib.get_close_matches(str(key).rsplit(".", 1)[-1], names, n=1, cutoff=0.6)
        where = ".".join([section, *str(key).split(".")[:-1]])
        hint = f"did you mean {where}.{guess[0]}? " if guess else ""
        raise ConfigError(f"unknown key '{section}.{key}'", f"{hint}valid keys of {where}: {', '.join(names)}") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        first = str(exc).splitlines()[0]
        raise ConfigError(f"invalid value for {section}.{key}: {first}", f"give {section}.{key} a value of the right type") from None
    except ValueError as exc:
        message = str(exc)
        match = _KEY_PREFIX.match(message)
        if match:
            key, problem = match.group(1), message[match.end():]
            raise ConfigError(f"invalid value for {section}.{key}: {problem}", f"override it, e.g. {section}.{key}=<value>") from None
        raise ConfigError(f"invalid {section}: {message}") from None


def _valid_keys(cls: type, key: str) -> list[str]:
    """Field names of the dataclass that ``key`` (``a.b.c``) was looked up in: ``cls`` or
    the nested dataclass its leading parts name."""
    import dataclasses

    for part in key.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        field_type = getattr(fields.get(part), "default_factory", None)
        if not isinstance(field_type, type) or not dataclasses.is_dataclass(field_type):
            break
        cls = field_type
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


@dataclass
class HardwareOptions:
    """Machine description the user adds to records (``hardware.label=h200-lab``)."""

    label: Optional[str] = None


@dataclass
class RunSpec:
    """Everything one run needs, validated and typed. Backends and scenarios never see Hydra."""

    backend_name: str
    backend_options: Any
    scenario_name: str
    scenario_kind: str
    scenario_options: Any
    model: ModelOptions
    dataset: DatasetOptions
    results_dir: Path
    cache_dir: Optional[str] = None
    hardware: HardwareOptions = field(default_factory=HardwareOptions)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def node(self) -> tuple[int, int]:
        """``(node_rank, nnodes)`` of a run made of one ``harness`` per node (multi-node
        training); ``(0, 1)`` for everything else."""
        dist = getattr(self.scenario_options, "distributed", None)
        nnodes = getattr(dist, "nnodes", 1)
        return (dist.node_rank, nnodes) if nnodes > 1 else (0, 1)


def _section(cfg: DictConfig, name: str) -> dict[str, Any]:
    node = cfg.get(name)
    if node is None:
        raise ConfigError(f"config has no '{name}' section", f"select one with {name}=<option>")
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def _name(section: dict[str, Any], key: str, label: str) -> str:
    value = section.pop(key, None)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{label} has no '{key}'", f"set {label}.{key}")
    return value


def _config_error_in(exc: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` a resolver raised, from the chain OmegaConf wraps it in."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def build_spec(cfg: DictConfig, registry: Registry) -> RunSpec:
    """Validate a composed config against the registered plugins' option types."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        cause = _config_error_in(exc)
        if cause is not None:  # a harness resolver's own one-line error and fix
            raise cause from None
        raise ConfigError(f"config does not resolve: {str(exc).splitlines()[0]}") from None
    backend = _section(cfg, "backend")
    backend_name = _name(backend, "name", "backend")
    backend_cls = registry.backend(backend_name)
    scenario = _section(cfg, "scenario")
    scenario_name = _name(scenario, "name", "scenario")
    scenario_kind = _name(scenario, "kind", "scenario")
    scenario_cls = registry.scenario(scenario_kind)
    return RunSpec(
        backend_name=backend_name,
        backend_options=typed(backend_cls.options_type, backend, "backend"),
        scenario_name=scenario_name,
        scenario_kind=scenario_kind,
        scenario_options=typed(scenario_cls.options_type, scenario, "scenario"),
        model=typed(ModelOptions, _section(cfg, "model"), "model"),
        dataset=typed(DatasetOptions, _section(cfg, "dataset"), "dataset"),
        results_dir=Path(str(cfg.get("results_dir") or "results")).expanduser(),
        cache_dir=cfg.get("cache_dir"),
        hardware=typed(HardwareOptions, cfg.get("hardware") or {}, "hardware"),
        config=resolved,  # type: ignore[arg-type]
    )
