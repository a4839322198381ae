"""The training loop: batches in, timed optimizer steps, evaluations, curves out.

It talks only to the :class:`~harness.backend.TrainingSession` contract, so any backend
that declares training runs through it. Each optimizer step is this rank's
``grad_accum_steps`` micro-batches; the step latency is the sum of their
``train_step`` calls under the session's timer (host batch assembly and the copy to
the device happen before, outside the timed region, as for inference calls).
Rank 0 evaluates on the whole eval split; under ddp the other ranks go straight on to
the next step and wait for rank 0 in its gradient all-reduce, so rank 0's step times
stay clean. A session whose model is spread over the ranks (fsdp, tp, pp) sets
``collective_eval``: every rank then takes part in each evaluation's forward passes.
Data is sliced by data-parallel replica (``World.dp_size``/``dp_rank``), not by process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from harness.backend import TrainingSession
from harness.data import Split, TaskData
from harness.errors import ConfigError, HarnessError
from harness.training import objectives
from harness.training.options import TrainingOptions
from harness.training.plan import World

#: Consecutive non-finite losses after which a run is declared diverged.
DIVERGED_AFTER = 5


@dataclass
class LoopResult:
    """What the loop saw: per-step latencies and losses, and the evaluations."""

    step_ms: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (step, elapsed_s, eval metric)
    eval_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def final_accuracy(self) -> Optional[float]:
        return self.evals[-1][2] if self.evals else None


def samples_per_step(options: TrainingOptions, world: World) -> int:
    """Global samples consumed by one optimizer step: batch x accumulation x data-parallel replicas."""
    return options.batch_size * options.grad_accum_steps * world.dp_size


def steps_per_epoch(train: Split, options: TrainingOptions, world: World) -> int:
    """Full optimizer steps in one pass over ``train`` (the incomplete last step is dropped)."""
    steps = len(train) // samples_per_step(options, world)
    if steps < 1:
        raise ConfigError(
            f"the train split has {len(train)} examples, fewer than one step's {samples_per_step(options, world)} (batch x accumulation x world size)",
            "lower scenario.batch_size or scenario.grad_accum_steps, or use a larger dataset",
        )
    return steps


def step_batches(train: Split, options: TrainingOptions, world: World) -> Iterator[list[dict[str, np.ndarray]]]:
    """This rank's micro-batches for each optimizer step, epoch after epoch.

    Each epoch is a fresh permutation seeded with ``seed + epoch``, identical on every
    rank; a step takes the next ``batch x accumulation x replicas`` examples and this
    rank the ``batch``-sized slice of each micro-step that is its replica's, so replicas
    never share examples within an epoch (the ranks of one replica read the same).
    """
    per_step = samples_per_step(options, world)
    size = options.batch_size
    epoch = 0
    while True:
        order = np.random.default_rng(options.seed + epoch).permutation(len(train))
        for start in range(0, len(order) - per_step + 1, per_step):
            index = order[start : start + per_step]
            micro = []
            for accum in range(options.grad_accum_steps):
                lo = (accum * world.dp_size + world.dp_rank) * size
                take = index[lo : lo + size]
                micro.append({**{k: v[take] for k, v in train.features.items()}, "labels": train.labels[take]})
            yield micro
        epoch += 1


def evaluate(session: TrainingSession, data: TaskData, batch_size: int) -> float:
    """The task's eval metric on the whole eval split: top-1 accuracy, or perplexity for a
    causal LM (:mod:`harness.training.objectives`)."""
    return objectives.of(data.task).evaluate(session, data, batch_size)


def train(
    session: TrainingSession,
    data: TaskData,
    options: TrainingOptions,
    total_steps: int,
    world: World = World(),
    *,
    writer: Any = None,
    report: Callable[[str], None] = print,
    label: str = "training",
) -> LoopResult:
    """Run ``total_steps`` optimizer steps, evaluating every ``eval_interval`` and at the end.

    ``writer`` is a TensorBoard ``SummaryWriter`` (rank 0 only) or None; ``report`` gets
    a progress line at each evaluation and about every tenth of the run.
    """
    result = LoopResult()
    timer = session.timer
    train_step = session.train_step
    collective_eval = bool(getattr(session, "collective_eval", False))
    every = max(1, total_steps // 10)
    metric = objectives.of(data.task).metric
    bad = 0
    started = time.perf_counter()
    batches = step_batches(data.train, options, world)
    for step in range(1, total_steps + 1):
        loaded = [session.load(micro) for micro in next(batches)]
        step_ms = 0.0
        loss = 0.0
        for inputs in loaded:
            value, seconds = timer.time(train_step, inputs)
            step_ms += seconds * 1000.0
            loss += value
        loss /= len(loaded)
        result.step_ms.append(step_ms)
        result.losses.append(loss)
        bad = bad + 1 if not math.isfinite(loss) else 0
        if bad >= DIVERGED_AFTER:
            raise HarnessError(
                f"training diverged: the loss was not finite for {bad} steps up to step {step}",
                "lower scenario.lr, keep scenario.grad_clip > 0, or train in fp32/bf16",
            )
        lr = getattr(session, "lr", None)  # optional: sessions that expose their learning rate
        if lr is not None:
            result.lrs.append(lr)
        if writer is not None:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/step_ms", step_ms, step)
            if lr is not None:
                writer.add_scalar("train/lr", lr, step)
        due = step == total_steps or bool(options.eval_interval and step % options.eval_interval == 0)
        if due and collective_eval and not world.is_main:
            evaluate(session, data, options.eval_batch_size)  # its part of the model's forward passes
        elif due and world.is_main:
            eval_start = time.perf_counter()
            accuracy = evaluate(session, data, options.eval_batch_size)
            now = time.perf_counter()
            result.eval_seconds += now - eval_start
            result.evals.append((step, now - started, accuracy))
            if writer is not None:
                writer.add_scalar(f"eval/{metric}", accuracy, step)
            report(f"{label}: step {step}/{total_steps}, loss {loss:.4f}, eval {metric} {accuracy:.4f}, {now - started:.0f} s")
        elif world.is_main and step % every == 0:
            report(f"{label}: step {step}/{total_steps}, loss {loss:.4f}, {time.perf_counter() - started:.0f} s")
    result.wall_seconds = time.perf_counter() - started
    global_losses = getattr(session, "global_losses", None)  # optional: the mean over replicas
    if global_losses is not None:
        result.losses = global_losses(result.losses)
    if writer is not None:
        writer.flush()
    return result
