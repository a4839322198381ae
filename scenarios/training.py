"""Training scenario: fine-tune a classifier and record what training costs.

Flow: check the backend declares training -> (one process) build model and data,
``backend.prepare_training`` -> timed optimizer steps with evaluations -> checkpoint
into the artifact cache; or (``distributed.world_size > 1``) the same run on every
rank of a torchrun launch, rank 0 reporting (across nodes, only node 0 writes a record).
The record carries train samples/s and tokens/s without the warm-up steps, step-latency
percentiles, the loss and eval curves (TensorBoard event files beside the records), time
to the target accuracy, the final accuracy, peak memory and the checkpoint path; a
data-parallel run adds its world size and the scaling efficiency against a matching
1-process record.

The scenario never names a backend: a backend that cannot train says so through
``capabilities().training`` and the run ends ``unsupported``.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Optional

from harness import hardware, identity, records
from harness.columns import Column
from harness.errors import ConfigError, Unsupported
from harness.hookspecs import hookimpl
from harness.scenario import RunContext, Scenario, ScenarioResult
from harness.training import metrics as training_metrics
from harness.training.architectures import check_layout
from harness.training.job import tensorboard_folder, train_recipe
from harness.training.options import RENDEZVOUS_KEYS, TrainingOptions


def require_training(ctx: RunContext, precision: str, strategy: str = "ddp") -> None:
    """Refuse, with the reason, a backend that does not declare training, this precision
    or this parallel strategy (before any process is launched)."""
    backend = ctx.backend
    capabilities = backend.capabilities()
    if not capabilities.training:
        raise Unsupported(
            f"backend '{backend.name}' cannot train: its capabilities declare inference only",
            "train with a backend whose harness-backends entry lists training, e.g. backend=pytorch",
        )
    if strategy not in capabilities.training_strategies:
        raise Unsupported(
            f"backend '{backend.name}' does not train with strategy {strategy} (it declares {', '.join(sorted(capabilities.training_strategies))})",
            "use one of those strategies, or backend=pytorch for fsdp, tp, pp and fsdp+tp",
        )
    backend.check_precision(precision)


def record_metrics(training: dict[str, Any]) -> dict[str, Any]:
    """The record's metrics: ``training`` plus the shared sections reports already read."""
    step = {k: v for k, v in training["step_latency_ms"].items()}
    return {
        "training": training,
        "latency_ms": step,
        "throughput": {"samples_per_s": training["samples_per_s"], "tokens_per_s": training["tokens_per_s"]},
        "accuracy": {
            "metric": training["eval_metric"],
            "value": training[f"final_{training['eval_metric']}"],
            "reference": None,
            "relative": None,
            "agreement": None,
        },
        "memory_mib": training["memory_mib"],
    }


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config without what a 1-process baseline may differ in: the run-local keys
    (folders, launcher), the machine, and the whole ``scenario.distributed`` section."""
    return identity.without(identity.job_config(config, ()), (*identity.MACHINE_KEYS, "scenario.distributed"))


def find_baseline(ctx: RunContext) -> tuple[Optional[dict[str, Any]], str]:
    """The newest ok 1-process record of this same experiment on this machine in results_dir."""
    spec = ctx.spec
    folder = Path(spec.results_dir)
    fingerprint = hardware.describe(ctx.backend.device_info() or None)["fingerprint"]
    wanted = _comparable(spec.config)
    best: Optional[dict[str, Any]] = None
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = records.read(path)
        except (OSError, ValueError):
            continue
        training = (rec.get("metrics") or {}).get("training") or {}
        if (
            rec.get("status") == "ok"
            and training.get("world_size") == 1
            and rec.get("backend", {}).get("name") == spec.backend_name
            and rec.get("hardware", {}).get("fingerprint") == fingerprint
            and _comparable(rec.get("config") or {}) == wanted
        ):
            if best is None or rec.get("created", "") >= best.get("created", ""):
                best = rec
    if best is None:
        return None, (f"no ok 1-process record of this run in {folder} on this machine: run it once with scenario.distributed.nproc_per_node=1 first")
    return best, ""


def add_scaling(ctx: RunContext, training: dict[str, Any]) -> None:
    """World size, global rate, and the scaling efficiency (null with the reason when no baseline)."""
    world = training["world_size"]
    training["global_samples_per_s"] = training["samples_per_s"]
    if world == 1:
        training.update(scaling_efficiency=None, scaling_baseline=None, scaling_reason="single-process run: it is the baseline for data-parallel runs")
        return
    baseline, reason = find_baseline(ctx)
    if baseline is None:
        training.update(scaling_efficiency=None, scaling_baseline=None, scaling_reason=reason)
        return
    single = baseline["metrics"]["training"]["samples_per_s"]
    training.update(
        scaling_efficiency=training_metrics.scaling_efficiency(training["samples_per_s"], world, single),
        scaling_baseline={"run_id": baseline["run_id"], "samples_per_s": single},
        scaling_reason=None,
    )


def model_config(model: Any) -> dict[str, Any]:
    """The model's transformers config as far as it is known without building it: a
    local folder's ``config.json`` under the config overrides."""
    import json

    config: dict[str, Any] = {}
    if model.path and (Path(model.path).expanduser() / "config.json").is_file():
        config.update(json.loads((Path(model.path).expanduser() / "config.json").read_text()))
    config.update(model.config or {})
    return config


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


#: What a training run costs and reaches (``metrics.training``).
TRAINING_COLUMNS = (
    Column("metrics.training.world_size", "World size", "integer"),
    Column("metrics.training.samples_per_s", "Train samples/s", "number", "higher"),
    Column("metrics.training.time_to_target_s", "Time to target", "seconds", "lower"),
    Column("metrics.training.final_accuracy", "Final accuracy", "fixed4", "higher"),
    Column("metrics.training.final_perplexity", "Final perplexity", "number", "lower"),  # causal LMs (llm_train)
    Column("metrics.training.tokens_per_s", "Train tokens/s", "number", "higher", when="metrics.training.final_perplexity"),
    Column("metrics.training.scaling_efficiency", "Scaling efficiency", "percent", "higher"),
    Column("metrics.training.memory_max_rank.params_mib", "Params MiB/rank", "number", "lower"),
    Column("metrics.training.memory_max_rank.model_state_mib", "Model state MiB/rank", "number", "lower"),
    Column("metrics.training.memory_max_rank.activations_mib", "Activations MiB/rank", "number", "lower"),
    Column("metrics.training.step_breakdown.communication_share", "Communication", "percent", "lower"),
)


class TrainingScenario(Scenario):
    kind = "training"
    options_type = TrainingOptions
    report_columns = TRAINING_COLUMNS
    record_section = "training"
    run_local_keys = RENDEZVOUS_KEYS

    @classmethod
    def nodes(cls, options: TrainingOptions) -> tuple[int, int]:
        """One ``harness`` per node: ``scenario.distributed.node_rank`` of ``nnodes``."""
        return options.distributed.node_rank, options.distributed.nnodes

    @classmethod
    def lock_group(cls, options: TrainingOptions) -> str | None:
        """The nodes of one run meet at one torchrun rendezvous."""
        return f"torchrun rendezvous {options.distributed.rdzv_endpoint}"

    def run(self, ctx: RunContext) -> ScenarioResult:
        opts: TrainingOptions = self.options
        spec = ctx.spec
        require_training(ctx, opts.precision, opts.distributed.strategy)
        if spec.model.checkpoint:
            raise ConfigError(
                "model.checkpoint is for inference runs; training starts from model.path or the config",
                "use model.path=<folder> to fine-tune a saved checkpoint",
            )
        dist = opts.distributed
        if dist.world_size > 1:
            check_layout(model_config(spec.model), spec.model.name, dist.strategy, dist.mesh_shape)
        board = str(tensorboard_folder(spec.results_dir, spec.scenario_name, spec.backend_name))
        if dist.world_size > 1:
            from harness.training.ddp import launch

            job = {
                "backend": {"name": spec.backend_name, "options": _plain(spec.backend_options)},
                "model": _plain(spec.model),
                "dataset": _plain(spec.dataset),
                "training": _plain(opts),
                "cache_root": ctx.cache_root,
                "tensorboard_dir": board,
            }
            result = launch(job, dist, ctx.status)
            if result is None:  # a node other than node 0: its ranks are done; the CLI writes no record
                return ScenarioResult(precision=opts.precision, metrics={}, batch_size=opts.batch_size)
        else:
            ctx.status(f"training {spec.model.name} on {spec.dataset.name} with {ctx.backend.name} ({opts.optimizer}, lr {opts.lr:g}, {opts.precision})")
            result = train_recipe(ctx.backend, spec.model, spec.dataset, opts, cache_root=ctx.cache_root, tensorboard_dir=board, report=ctx.status)
        training = result["training"]
        add_scaling(ctx, training)
        return ScenarioResult(
            precision=opts.precision,
            metrics=record_metrics(training),
            batch_size=opts.batch_size,
            seq_len=opts.seq_len if training["tokens_per_s"] is not None else None,
            model=result["model"],
            backend={"device": result["device"]},
        )


@hookimpl
def harness_register_scenarios(registry: Any) -> None:
    registry.add_scenario(TrainingScenario)
