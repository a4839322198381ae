"""One training run from typed options to metrics and a saved checkpoint.

The same function serves the ``training`` scenario (one process), every rank of a
torchrun launch (``harness.training.ddp_worker``) and ``model.checkpoint=auto``, so a
checkpoint trained by any of them is the same artifact under the same cache key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from harness import checkpoints, stats
from harness.backend import Backend, TrainingSession
from harness.data import DatasetOptions, TaskData, load_dataset
from harness.errors import ConfigError, HarnessError
from harness.models import LoadedModel, ModelOptions, load_model
from harness.training import loop, metrics, objectives
from harness.training.options import TrainingOptions
from harness.training.plan import LossFn, TrainingPlan, World

#: transformers config fields that carry dropout probabilities (BERT's names).
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")


def set_dropout(model: LoadedModel, p: float) -> None:
    """Set every dropout layer to ``p`` and the config fields that describe them.

    Config fields alone act only when a model is built, and a model loaded from a
    folder is already built; setting the layers too makes ``p`` apply either way, and
    the saved config then records it.
    """
    import torch

    from harness.training.architectures import hf_model as transformers_model

    hf_model = transformers_model(model.module)
    layers = [m for m in model.module.modules() if isinstance(m, torch.nn.Dropout)]
    if not layers:
        raise ConfigError(f"scenario.dropout={p} but model {model.name} has no dropout layers", "leave scenario.dropout=null for this model")
    for layer in layers:
        layer.p = p
    config = getattr(hf_model, "config", None)
    for name in DROPOUT_FIELDS:
        if config is not None and getattr(config, name, None) is not None:
            setattr(config, name, p)


def check_fit(model: LoadedModel, data: TaskData, model_options: ModelOptions) -> None:
    """Refuse a model that cannot consume the dataset, with the fix, before any training."""
    from harness.generation.decoders import is_decoder

    missing = [n for n in model.input_names if n not in data.train.features]
    if missing:
        raise ConfigError(
            f"model {model.name} takes {', '.join(model.input_names)} but the dataset gives {', '.join(data.input_names)}",
            "pair text models with text datasets and image models with images",
        )
    if is_decoder(model_options.family) != (data.task == "causal-lm"):
        raise ConfigError(
            f"model {model.name} (family {model_options.family}) cannot learn the dataset's {data.task} task",
            "train decoder LLMs on dataset=corpus (+scenario=llm_train) and classifiers on labelled data",
        )
    if data.task != "causal-lm" and data.num_labels != model_options.num_labels:
        raise ConfigError(
            f"the dataset has {data.num_labels} labels but model.num_labels={model_options.num_labels}", f"set model.num_labels={data.num_labels}"
        )


def open_writer(folder: Optional[str], report: Callable[[str], None]) -> tuple[Any, Optional[str]]:
    """A TensorBoard ``SummaryWriter`` on ``folder`` (or None, with why not)."""
    if not folder:
        return None, "no TensorBoard folder requested"
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        report("tensorboard is not installed: no event files (pip install tensorboard)")
        return None, "tensorboard is not installed (pip install 'harness[tensorboard]')"
    return SummaryWriter(log_dir=folder), None


@dataclass
class Trained:
    """A finished run: the model (trained in place), its session and what the loop saw."""

    model: LoadedModel
    session: TrainingSession
    plan: TrainingPlan
    loop: loop.LoopResult
    tensorboard: Optional[str]
    tensorboard_reason: Optional[str]


def train_model(
    backend: Backend,
    model: LoadedModel,
    data: TaskData,
    options: TrainingOptions,
    *,
    world: World = World(),
    loss: Optional[LossFn] = None,
    tensorboard_dir: Optional[str] = None,
    report: Callable[[str], None] = print,
    label: str = "training",
) -> Trained:
    """Train ``model`` in place on ``data`` through ``backend``'s training session."""
    if options.dropout is not None:
        set_dropout(model, options.dropout)
    per_epoch = loop.steps_per_epoch(data.train, options, world)
    total = options.total_steps(per_epoch)
    if options.warmup_steps_excluded >= total:
        raise ConfigError(
            f"scenario.warmup_steps_excluded={options.warmup_steps_excluded} leaves none of the {total} steps to measure", "lower it or train for more steps"
        )
    plan = TrainingPlan.from_options(options, model.input_names, total, world, loss or objectives.of(data.task).loss)
    session = backend.prepare_training(model.module, plan)
    writer, why_not = open_writer(tensorboard_dir, report) if world.is_main else (None, "not rank 0")
    try:
        result = loop.train(session, data, options, total, world, writer=writer, report=report, label=label)
    finally:
        if writer is not None:
            writer.close()
    model.module.eval()
    return Trained(model, session, plan, result, tensorboard_dir if writer is not None else None, why_not)


def training_metrics(trained: Trained, options: TrainingOptions, data: TaskData, world: World) -> dict[str, Any]:
    """The ``metrics.training`` section of the record (rank 0's view)."""
    result = trained.loop
    per_step = loop.samples_per_step(options, world)
    kept = metrics.measured_steps(result.step_ms, options.warmup_steps_excluded)
    samples_per_s = metrics.samples_per_second(result.step_ms, per_step, options.warmup_steps_excluded)
    seq_len = data.seq_len if data.task in ("text-classification", "causal-lm") else None
    objective = objectives.of(data.task)
    target = metrics.time_to_target(result.evals, objective.target(options), objective.metric, objective.higher_is_better)
    plan = trained.plan
    dist = options.distributed
    spread = trained.session.parallel_metrics() if hasattr(trained.session, "parallel_metrics") else {}
    return {
        "world_size": world.size,
        "strategy": spread.get("strategy", dist.strategy if world.size > 1 else "ddp"),
        "mesh": dict(plan.parallel.mesh) or {"dp": 1},
        "data_parallel_size": world.dp_size,
        "microbatches": plan.parallel.microbatches if plan.parallel.strategy == "pp" and world.size > 1 else None,
        "pipeline_schedule": dist.pipeline_schedule if plan.parallel.strategy == "pp" and world.size > 1 else None,
        "activation_checkpointing": plan.parallel.activation_checkpointing,
        "mixed_precision": spread.get("mixed_precision"),
        "memory_per_rank": spread.get("per_rank"),
        "memory_max_rank": metrics.max_over_ranks(spread.get("per_rank")),
        "step_breakdown": spread.get("step_breakdown"),
        "steps": len(result.step_ms),
        "epochs": len(result.step_ms) * per_step / len(data.train),
        "samples_per_step": per_step,
        "warmup_steps_excluded": options.warmup_steps_excluded,
        "samples_per_s": samples_per_s,
        "tokens_per_s": stats.tokens_per_second(samples_per_s, seq_len) if seq_len else None,
        "step_latency_ms": {**stats.summarize(kept).as_dict(), "samples": [round(s, 4) for s in kept]},
        "loss_curve": metrics.loss_points(result.losses, options.log_interval),
        "eval_metric": objective.metric,
        "eval_curve": [[step, value] for step, _, value in result.evals],
        "eval_elapsed_s": [round(elapsed, 3) for _, elapsed, _ in result.evals],
        "lr_final": result.lrs[-1] if result.lrs else None,
        "target_accuracy": options.target_accuracy,
        "target_perplexity": options.target_perplexity,
        "time_to_target_s": target.seconds,
        "time_to_target_step": target.step,
        "time_to_target_reason": target.reason,
        **objective.record_fields([value for _, _, value in result.evals]),
        "train_wall_s": result.wall_seconds,
        "eval_s": result.eval_seconds,
        "memory_mib": trained.session.memory(),
        "backend_metrics": trained.session.metrics() if hasattr(trained.session, "metrics") else {},
        "optimizer": plan.optimizer,
        "schedule": plan.schedule,
        "warmup_steps": plan.warmup_steps,
        "lr": plan.lr,
        "precision": plan.precision,
        "tensorboard": trained.tensorboard,
        "tensorboard_reason": None if trained.tensorboard else trained.tensorboard_reason,
        "checkpoint": None,
    }


def whole_model(trained: Trained, model_options: ModelOptions) -> LoadedModel:
    """The trained model with all its weights on rank 0 (a collective for sharded sessions).

    A session that spread the module (fsdp, tp, pp) leaves each rank a part of it; it
    gathers the whole weights on rank 0, where they are loaded into a freshly built copy
    of the model, so the checkpoint is a plain ``save_pretrained`` folder like any other.
    """
    gather = getattr(trained.session, "full_state_dict", None)
    state = gather() if gather is not None else None
    if state is None:
        return trained.model
    fresh = load_model(model_options)
    _, unexpected = fresh.module.load_state_dict(state, strict=False)
    # Every parameter under one of its names (a tied one under its first); buffers are rebuilt.
    missing = {name for name, _ in fresh.module.named_parameters()} - set(state)
    if unexpected or missing:
        raise HarnessError(f"gathered weights do not match model {model_options.name}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    fresh.module.eval()
    return fresh


def close(session: TrainingSession) -> None:
    """Let a session leave whatever it joined (a process group); optional in the contract."""
    closer = getattr(session, "close", None)
    if callable(closer):
        closer()


def train_recipe(
    backend: Backend,
    model_options: ModelOptions,
    dataset_options: DatasetOptions,
    options: TrainingOptions,
    *,
    cache_root: Optional[str] = None,
    world: World = World(),
    tensorboard_dir: Optional[str] = None,
    data: Optional[TaskData] = None,
    report: Callable[[str], None] = print,
    label: str = "training",
) -> dict[str, Any]:
    """Build, train, evaluate and (rank 0) save; return ``{"training", "model", "device"}``."""
    started = time.perf_counter()
    from harness.generation.tokenizer import text_tokenizer

    model = load_model(model_options)
    if data is None:
        data = load_dataset(dataset_options, seq_len=options.seq_len, tokenizer=text_tokenizer(model_options.family, model.tokenizer, cache_root))
    check_fit(model, data, model_options)
    key = checkpoints.checkpoint_key(model_options, data.fingerprint(), options)
    trained = train_model(backend, model, data, options, world=world, tensorboard_dir=tensorboard_dir, report=report, label=label)
    section = training_metrics(trained, options, data, world)
    model = whole_model(trained, model_options)
    if world.is_main:
        metric = section["eval_metric"]
        meta = {
            "recipe": options.__class__.__name__,
            "model": model_options.name,
            "dataset": dataset_options.name,
            f"final_{metric}": section[f"final_{metric}"],
            "steps": section["steps"],
            "world_size": world.size,
        }
        section["checkpoint"] = str(checkpoints.save(model, data.tokenizer, key, cache_root, meta))
        section["checkpoint_key"] = key
    close(trained.session)
    section["total_wall_s"] = time.perf_counter() - started
    return {
        "training": section,
        "model": {"params": model.params, "source": model.source},
        "device": trained.session.device,
    }


def tensorboard_folder(results_dir: Path, scenario: str, backend: str) -> Path:
    """``<results_dir>/tensorboard/<UTC time>_<scenario>_<backend>_<8 hex>``: next to the records."""
    import uuid

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return Path(results_dir).resolve() / "tensorboard" / f"{stamp}_{scenario}_{backend}_{uuid.uuid4().hex[:8]}"
