"""The training plan a backend receives: optimizer, schedule, precision, loss, world.

A backend never sees config: :meth:`Backend.prepare_training` gets this typed plan,
built from :class:`~harness.training.options.TrainingOptions` once the number of steps
is known (the LR schedule needs it) and the process's place in the world is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from harness.training.options import DistributedOptions, TrainingOptions

#: ``loss(logits, inputs) -> scalar tensor``; ``inputs`` are the loaded batch (labels included).
LossFn = Callable[[Any, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class World:
    """This process's place in the run (torchrun's ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``).

    ``dp_size``/``dp_rank`` place it among the data-parallel replicas, which read
    different slices of each batch; they default to one replica per process (ddp,
    fsdp). Tensor- and pipeline-parallel processes of one replica read the same data.
    """

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    dp_size: Optional[int] = None
    dp_rank: Optional[int] = None

    def __post_init__(self) -> None:
        if self.dp_size is None:
            object.__setattr__(self, "dp_size", self.size)
        if self.dp_rank is None:
            object.__setattr__(self, "dp_rank", self.rank)

    @classmethod
    def of(cls, size: int, rank: int, local_rank: int, distributed: DistributedOptions) -> "World":
        """This process in ``distributed``'s mesh: ranks are laid out outermost dimension
        first, so with ``[dp, tp]`` the ``tp`` ranks of one replica are neighbours (one
        node) and ``dp_rank = rank // tp``."""
        dp = distributed.data_parallel_size
        return cls(size, rank, local_rank, dp, rank // (size // dp))

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, logs, saves the checkpoint and reports."""
        return self.rank == 0


@dataclass(frozen=True)
class ParallelPlan:
    """How the backend spreads the model: strategy, mesh, pipeline and memory options."""

    strategy: str = "ddp"
    mesh: tuple[tuple[str, int], ...] = ()  # (dimension, size), outermost first; () = one process
    microbatches: int = 1
    pipeline_schedule: str = "1f1b"
    activation_checkpointing: bool = False
    profile_steps: tuple[int, ...] = ()  # steps whose compute/communication split is profiled

    @classmethod
    def from_options(cls, options: TrainingOptions) -> "ParallelPlan":
        dist = options.distributed
        return cls(
            strategy=dist.strategy,
            mesh=tuple(dist.mesh_shape.items()) if dist.world_size > 1 else (),
            microbatches=dist.microbatches if dist.strategy == "pp" else 1,
            pipeline_schedule=dist.pipeline_schedule,
            activation_checkpointing=options.activation_checkpointing,
            profile_steps=tuple(options.profiled_steps()),
        )

    def size(self, dimension: str) -> int:
        """The mesh's size along ``dimension`` (1 when it has none)."""
        return dict(self.mesh).get(dimension, 1)


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
    parallel: ParallelPlan = field(default_factory=ParallelPlan)

    @classmethod
    def from_options(
        cls, options: TrainingOptions, input_names: tuple[str, ...], total_steps: int, world: World = World(), loss: Optional[LossFn] = None
    ) -> "TrainingPlan":
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
            parallel=ParallelPlan.from_options(options),
        )
