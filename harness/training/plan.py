"""The training plan a backend receives: optimizer, schedule, precision, loss, world.

A backend never sees config: :meth:`Backend.prepare_training` gets this typed plan,
built from :class:`~harness.training.options.TrainingOptions` once the number of steps
is known (the LR schedule needs it) and the process's place in the world is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from harness.training.options import TrainingOptions

#: ``loss(logits, inputs) -> scalar tensor``; ``inputs`` are the loaded batch (labels included).
LossFn = Callable[[Any, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs, saves the checkpoint and reports."""
        return self.rank == 0


@dataclass(frozen=True)
class TrainingPlan:
    """Everything a training backend needs to set up a :class:`TrainingSession`."""

    input_names: tuple[str, ...]
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    nesterov: bool
    grad_clip: float
    grad_accum_steps: int
    schedule: str
    warmup_steps: int
    total_steps: int
    precision: str
    seed: int
    world: World = World()
    loss: Optional[LossFn] = None  # None = cross-entropy against ``inputs["labels"]``

    @classmethod
    def from_options(cls, options: TrainingOptions, input_names: tuple[str, ...], total_steps: int,
                     world: World = World(), loss: Optional[LossFn] = None) -> "TrainingPlan":
        return cls(
            input_names=input_names,
            optimizer=options.optimizer,
            lr=options.lr,
            weight_decay=options.weight_decay,
            momentum=options.momentum,
            nesterov=options.nesterov,
            grad_clip=options.grad_clip,
            grad_accum_steps=options.grad_accum_steps,
            schedule=options.schedule,
            warmup_steps=options.resolved_warmup(total_steps),
            total_steps=total_steps,
            precision=options.precision,
            seed=options.seed,
            world=world,
            loss=loss,
        )
