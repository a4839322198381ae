"""The typed run spec: everything one run needs, validated (:func:`harness.spec.build_spec`).

Plugins import the option helpers from here (``from harness.config import require``);
they live in :mod:`harness.validation` so that options modules need not depend on the
spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.data import DatasetOptions
from harness.models import ModelOptions
from harness.training.options import TrainingOptions
from harness.validation import choice, cores_bound, require, typed

__all__ = ["HardwareOptions", "JobInfo", "RunSpec", "TrainRecipe", "choice", "cores_bound", "require", "typed"]


@dataclass
class HardwareOptions:
    """Machine description the user adds to records (``hardware.label=h200-lab``)."""

    label: Optional[str] = None


@dataclass(frozen=True)
class TrainRecipe:
    """The train recipe ``auto`` checkpoints come from: a ``conf/scenario/`` name and its options."""

    name: str
    options: TrainingOptions


@dataclass(frozen=True)
class JobInfo:
    """Which job of the command this run is: its key (what resume matches), and in a
    ``-m`` sweep its number and overrides."""

    key: str = ""
    num: Optional[int] = None
    overrides: tuple[str, ...] = ()


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
    #: What the scenario kind declared for these options (:class:`harness.scenario.Scenario`):
    #: ``(node_rank, nnodes)``, the lock group of a multi-node run, its run-local keys
    #: (full dotted config keys), and the record's ``scenario`` section before the run.
    node: tuple[int, int] = (0, 1)
    lock_group: Optional[str] = None
    run_local_keys: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    #: The family recipe ``auto`` checkpoints come from (None: nothing in this run says ``auto``).
    auto_recipe: Optional[TrainRecipe] = None
    job: JobInfo = field(default_factory=JobInfo)
