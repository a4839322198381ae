"""Which parallel strategy a training plan runs with: one table over the strategy modules.

Kept apart from :mod:`harness.training.parallel` (data/tensor parallelism) and
:mod:`harness.training.pipeline` (pipeline parallelism, built on the former) so that
neither has to import the other to name it.
"""

from __future__ import annotations

from harness.training.parallel import FSDP, FSDPTensorParallel, Strategy, TensorParallel
from harness.training.pipeline import PipelineParallel
from harness.training.plan import TrainingPlan

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "ddp": Strategy,
    "fsdp": FSDP,
    "tp": TensorParallel,
    "fsdp+tp": FSDPTensorParallel,
    "pp": PipelineParallel,
}


def strategy_for(plan: TrainingPlan, device: str) -> Strategy:
    """The strategy the plan names (a one-process run is always the plain one)."""
    if plan.world.size == 1:
        return Strategy(plan, device)
    return STRATEGY_CLASSES[plan.parallel.strategy](plan, device)
