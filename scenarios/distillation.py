"""Distillation scenario: train a smaller student from a trained teacher, then compare them.

Flow: teacher = ``scenario.teacher`` (``auto``: the checkpoint the family's train
recipe produces, trained once if absent; or a folder) -> the teacher's logits on the
train split, computed once through a backend inference session (no augmentation, so
this equals running the teacher beside every step) -> a student built from the
model config with ``scenario.student`` overrides, trained through the backend's
training session on ``alpha x T^2 x KL + (1 - alpha) x CE`` -> both models evaluated
and timed with the same backend, precision and batch -> student accuracy, teacher
accuracy, top-1 agreement and the student's inference speedup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from harness import stats
from harness.accuracy import session_logits
from harness.columns import Column
from harness.config import require
from harness.errors import Unsupported
from harness.hookspecs import hookimpl
from harness.measure import MeasurePlan, measure
from harness.models import load_model
from harness.scenario import RunContext, Scenario, ScenarioResult
from harness.training.job import check_fit, tensorboard_folder, train_model, training_metrics
from harness.training.kd import KDLoss
from harness.training.options import RENDEZVOUS_KEYS, InferenceTiming, TrainingOptions
from harness.training.plan import World


@dataclass
class DistillationOptions(TrainingOptions, InferenceTiming):
    """``scenario.*`` keys of ``kind: distillation``: a training recipe for the student plus KD.

    ``student`` overrides fields of the model's transformers config (``hidden_size``,
    ``num_hidden_layers``...); ``alpha`` weighs the soft (teacher) term, ``1 - alpha``
    the hard-label term. The inference-timing keys time teacher and student.
    """

    teacher: str = "auto"
    temperature: float = 2.0
    alpha: float = 0.5
    student: dict[str, Any] = field(default_factory=lambda: {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512})

    def __post_init__(self) -> None:
        TrainingOptions.__post_init__(self)
        InferenceTiming.__post_init__(self)
        require(bool(self.teacher), "teacher", "must be 'auto' or a checkpoint folder")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(0 <= self.alpha <= 1, "alpha", f"must be in [0, 1], got {self.alpha}")


def logits_of(session: Any, features: dict[str, np.ndarray], output: str, batch_size: int) -> np.ndarray:
    """An inference session's logits over all rows of ``features``, in batches of exactly
    ``batch_size`` rows (the last one padded, its padding dropped: the batch-shape guarantee
    of the backend contract)."""
    return session_logits(session, features, batch_size, output).astype(np.float32)


def timed(ctx: RunContext, session: Any, batch: dict[str, np.ndarray], opts: DistillationOptions, label: str) -> list[float]:
    """Latency samples (ms) of ``session`` on ``batch`` under the inference-timing keys."""
    plan = MeasurePlan(opts.warmup_iters, opts.min_iters, opts.min_duration_s, opts.max_duration_s)
    ctx.status(f"timing the {label}: {opts.warmup_iters} warm-up calls, then >= {opts.min_iters} calls and >= {opts.min_duration_s:g} s")
    progress = (lambda n, s: ctx.progress(f"timing {label}", n, s)) if ctx.progress else None
    return measure(session, session.load(batch), plan, progress).samples_ms


class DistillationScenario(Scenario):
    kind = "distillation"
    options_type = DistillationOptions
    record_section = "distillation"
    run_local_keys = RENDEZVOUS_KEYS
    checkpoint_options = ("teacher",)
    report_columns = (
        Column("metrics.distillation.teacher_accuracy", "Teacher accuracy", "fixed4", "higher"),
        Column("metrics.distillation.student_accuracy", "Student accuracy", "fixed4", "higher"),
        Column("metrics.distillation.agreement", "Agreement", "fixed4", "higher"),
        Column("metrics.distillation.param_ratio", "Student/teacher params", "percent", "lower"),
        Column("metrics.distillation.speedup", "Student speedup", "ratio", "higher"),
        Column("metrics.training.time_to_target_s", "Time to target", "seconds", "lower"),
    )

    def run(self, ctx: RunContext) -> ScenarioResult:
        from harness.scenarios.training import require_training

        opts: DistillationOptions = self.options
        spec, backend = ctx.spec, ctx.backend
        require_training(ctx, opts.precision)
        if opts.distributed.world_size > 1:
            raise Unsupported("distillation runs in one process", "drop scenario.distributed.nproc_per_node and nnodes")

        teacher = ctx.load_model(opts.teacher)
        data = ctx.load_data(opts.seq_len, teacher.tokenizer)
        check_fit(teacher, data, spec.model)
        output = teacher.output_names[0]
        batch = data.sample_batch(opts.batch_size)
        artifact, _ = ctx.artifact(teacher, data, batch)
        ctx.status(f"teacher {teacher.name} ({teacher.source}): logits on {len(data.train)} train examples")
        teacher_session = backend.prepare(artifact, opts.precision)
        train_logits = logits_of(teacher_session, data.train.features, output, opts.eval_batch_size)
        teacher_eval = logits_of(teacher_session, data.eval.features, output, opts.eval_batch_size)

        student_options = replace(spec.model, name=f"{spec.model.name}-student", path=None, checkpoint=None, config={**spec.model.config, **opts.student})
        student = load_model(student_options)
        ctx.status(
            f"student {student_options.name}: {student.params:,} parameters "
            f"(teacher {teacher.params:,}); distilling at T={opts.temperature:g}, alpha={opts.alpha:g}"
        )
        kd_data = replace(data, train=replace(data.train, features={**data.train.features, "teacher_logits": train_logits}))
        board = str(tensorboard_folder(spec.results_dir, spec.scenario_name, spec.backend_name))
        trained = train_model(
            backend, student, kd_data, opts, loss=KDLoss(opts.temperature, opts.alpha), tensorboard_dir=board, report=ctx.status, label="distilling"
        )
        training = training_metrics(trained, opts, data, World())
        training["checkpoint"] = str(self._save(ctx, student, student_options, data, teacher))

        student_artifact, _ = ctx.artifact(student, data, batch)
        student_session = backend.prepare(student_artifact, opts.precision)
        student_eval = logits_of(student_session, data.eval.features, output, opts.eval_batch_size)
        teacher_ms = timed(ctx, teacher_session, batch, opts, "teacher")
        student_ms = timed(ctx, student_session, batch, opts, "student")
        for session in (teacher_session, student_session):
            session.close()

        labels = data.eval.labels
        teacher_acc = float((teacher_eval.argmax(-1) == labels).mean())
        student_acc = float((student_eval.argmax(-1) == labels).mean())
        agreement = float((teacher_eval.argmax(-1) == student_eval.argmax(-1)).mean())
        teacher_stats, student_stats = stats.summarize(teacher_ms), stats.summarize(student_ms)
        student_per_s = stats.samples_per_second(opts.batch_size, student_ms)
        seq_len = opts.seq_len if data.task == "text-classification" else None
        distillation = {
            "teacher_accuracy": teacher_acc,
            "student_accuracy": student_acc,
            "accuracy_delta": student_acc - teacher_acc,
            "agreement": agreement,
            "teacher_params": teacher.params,
            "student_params": student.params,
            "param_ratio": student.params / teacher.params,
            "teacher_latency_ms": teacher_stats.as_dict(),
            "student_latency_ms": student_stats.as_dict(),
            "speedup": teacher_stats.p50 / student_stats.p50,
            "throughput_speedup": student_per_s / stats.samples_per_second(opts.batch_size, teacher_ms),
            "temperature": opts.temperature,
            "alpha": opts.alpha,
            "student_config": dict(opts.student),
            "teacher_source": teacher.source,
            "student_checkpoint": training["checkpoint"],
        }
        return ScenarioResult(
            precision=opts.precision,
            metrics={
                "distillation": distillation,
                "training": training,
                "latency_ms": {**student_stats.as_dict(), "samples": [round(s, 6) for s in student_ms]},
                "throughput": {"samples_per_s": student_per_s, "tokens_per_s": stats.tokens_per_second(student_per_s, seq_len) if seq_len else None},
                "accuracy": {
                    "metric": "accuracy",
                    "value": student_acc,
                    "reference": teacher_acc,
                    "relative": student_acc / teacher_acc if teacher_acc else None,
                    "agreement": agreement,
                },
                "noise": {"cv": stats.coefficient_of_variation(student_ms)},
            },
            batch_size=opts.batch_size,
            seq_len=seq_len,
            model={
                "name": student_options.name,
                "params": student.params,
                "source": f"distilled from {teacher.source}",
                "teacher": {"name": teacher.name, "params": teacher.params, "source": teacher.source},
            },
            backend={"device": teacher_session.device},
        )

    def _save(self, ctx: RunContext, student: Any, student_options: Any, data: Any, teacher: Any) -> Any:
        """The student checkpoint, keyed by its recipe, the data and the teacher's weights."""
        from harness import checkpoints

        opts: DistillationOptions = self.options
        kd = {"teacher": teacher.weights_digest(), "temperature": opts.temperature, "alpha": opts.alpha}
        key = checkpoints.checkpoint_key(student_options, data.fingerprint(), opts, extra=kd)
        meta = {"recipe": "distillation", "model": student_options.name, "teacher": teacher.source, "student": asdict(student_options)["config"]}
        return checkpoints.save(student, data.tokenizer, key, ctx.cache_root, meta)


@hookimpl
def harness_register_scenarios(registry: Any) -> None:
    registry.add_scenario(DistillationScenario)
