"""From a composed Hydra config to a validated, typed :class:`~harness.config.RunSpec`.

Each config section is validated against a dataclass: the core's own for ``model``,
``dataset`` and the run settings; the selected backend's ``options_type`` for
``backend``; the selected scenario kind's ``options_type`` for ``scenario``. Plugins
therefore type their own options, and a wrong type or value fails with one line
naming the full key (``scenario.batch_size``) instead of a traceback. It needs the
plugin registry (which option types exist), so it sits above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.config import HardwareOptions, JobInfo, RunSpec, TrainRecipe
from harness.data import DatasetOptions
from harness.errors import ConfigError
from harness.identity import job_key
from harness.models import ModelOptions
from harness.registry import Registry
from harness.validation import typed


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


def build_spec(cfg: DictConfig, registry: Registry, recipes: Optional[Callable[[str], Optional[TrainRecipe]]] = None) -> RunSpec:
    """Validate a composed config against the registered plugins' option types.

    The scenario kind's declarations (:class:`harness.scenario.Scenario`) are read here,
    once, into the spec. ``recipes`` maps a model family to its train recipe; it is
    asked only when the run names ``auto`` for a checkpoint (the CLI composes the
    recipe's YAML, :func:`harness.compose.recipe_for`).
    """
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
    scenario_options: Any = typed(scenario_cls.options_type, scenario, "scenario")
    model = typed(ModelOptions, _section(cfg, "model"), "model")
    run_local = tuple(f"scenario.{key}" for key in scenario_cls.run_local_keys)
    node_rank, nnodes = scenario_cls.nodes(scenario_options)
    auto = model.checkpoint == "auto" or any(getattr(scenario_options, key, None) == "auto" for key in scenario_cls.checkpoint_options)
    return RunSpec(
        backend_name=backend_name,
        backend_options=typed(backend_cls.options_type, backend, "backend"),
        scenario_name=scenario_name,
        scenario_kind=scenario_kind,
        scenario_options=scenario_options,
        model=model,
        dataset=typed(DatasetOptions, _section(cfg, "dataset"), "dataset"),
        results_dir=Path(str(cfg.get("results_dir") or "results")).expanduser(),
        cache_dir=cfg.get("cache_dir"),
        hardware=typed(HardwareOptions, cfg.get("hardware") or {}, "hardware"),
        config=resolved,  # type: ignore[arg-type]
        node=(node_rank, nnodes) if nnodes > 1 else (0, 1),
        lock_group=scenario_cls.lock_group(scenario_options) if nnodes > 1 else None,
        run_local_keys=run_local,
        summary=scenario_cls.summary(scenario_options),
        auto_recipe=recipes(model.family) if auto and recipes is not None else None,
        job=JobInfo(key=job_key(resolved, run_local)),  # type: ignore[arg-type]
    )
