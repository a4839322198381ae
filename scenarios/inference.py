"""Inference scenario: validate outputs against eager fp32, then time single-stream calls.

Flow: build model -> data -> artifact (ONNX export when the backend consumes ONNX)
-> backend session -> output-validation gate -> warm-up + measurement -> metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness import stats
from harness.config import choice, require
from harness.errors import Mismatch
from harness.export import eager_outputs
from harness.hookspecs import hookimpl
from harness.measure import MeasurePlan, measure
from harness.scenario import RunContext, Scenario, ScenarioResult

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")


@dataclass
class InferenceOptions:
    """``scenario.*`` keys of ``kind: inference``."""

    precision: str = "fp32"
    batch_size: int = 8
    seq_len: int = 128
    warmup_iters: int = 5
    min_iters: int = 20
    min_duration_s: float = 2.0
    max_duration_s: float = 60.0
    keep_samples: bool = True

    def __post_init__(self) -> None:
        choice(self.precision, PRECISIONS, "precision")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.seq_len >= 2, "seq_len", f"must be >= 2, got {self.seq_len}")
        require(self.warmup_iters >= 0, "warmup_iters", f"must be >= 0, got {self.warmup_iters}")
        require(self.min_iters >= 1, "min_iters", f"must be >= 1, got {self.min_iters}")
        require(self.min_duration_s >= 0, "min_duration_s", f"must be >= 0, got {self.min_duration_s}")
        require(
            self.max_duration_s >= self.min_duration_s,
            "max_duration_s",
            f"must be >= min_duration_s ({self.min_duration_s}), got {self.max_duration_s}",
        )


def latency_metrics(samples_ms: list[float], batch_size: int, seq_len: int | None, keep_samples: bool) -> dict[str, Any]:
    """Latency percentiles, throughput and noise for single-stream samples."""
    summary = stats.summarize(samples_ms).as_dict()
    if keep_samples:
        summary["samples"] = [round(s, 6) for s in samples_ms]
    per_s = stats.samples_per_second(batch_size, samples_ms)
    return {
        "latency_ms": summary,
        "throughput": {
            "samples_per_s": per_s,
            "tokens_per_s": stats.tokens_per_second(per_s, seq_len) if seq_len else None,
        },
        "noise": {"cv": stats.coefficient_of_variation(samples_ms)},
    }


class InferenceScenario(Scenario):
    kind = "inference"
    options_type = InferenceOptions

    def run(self, ctx: RunContext) -> ScenarioResult:
        opts: InferenceOptions = self.options
        backend = ctx.backend
        backend.check_precision(opts.precision)
        model = ctx.load_model()
        data = ctx.load_data(opts.seq_len, model.tokenizer)
        seq_len = opts.seq_len if data.task == "text-classification" else None
        batch = data.sample_batch(opts.batch_size)
        artifact, stage_metrics = ctx.artifact(model, data, batch)

        ctx.status(f"preparing {backend.name} session ({opts.precision})")
        session = backend.prepare(artifact, opts.precision)
        inputs = session.load(batch)
        got = session.fetch(session.run(inputs))[model.output_names[0]]
        reference = eager_outputs(model, batch)
        diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
        tolerance = backend.capabilities().tolerance.get(opts.precision, 1e-3)
        validation = {"max_abs_diff": diff, "tolerance": tolerance}
        if not diff <= tolerance:
            raise Mismatch(
                f"{backend.name} {opts.precision} outputs differ from eager fp32 by {diff:.3g} (tolerance {tolerance})",
                "the backend's result is wrong at this precision; report it to the backend's maintainers",
            )

        ctx.status(f"measuring: {opts.warmup_iters} warm-up calls, then >= {opts.min_iters} calls and >= {opts.min_duration_s:g} s")
        plan = MeasurePlan(opts.warmup_iters, opts.min_iters, opts.min_duration_s, opts.max_duration_s)
        progress = (lambda n, s: ctx.progress("measuring", n, s)) if ctx.progress else None
        measurement = measure(session, inputs, plan, progress)
        metrics = latency_metrics(measurement.samples_ms, opts.batch_size, seq_len, opts.keep_samples)
        metrics.update(stage_metrics)
        metrics["validation"] = validation
        metrics["window"] = {"start": measurement.started_at, "end": measurement.ended_at}
        memory = session.memory()
        if memory:
            metrics["memory_mib"] = memory
        session.close()
        size = artifact.onnx_path.stat().st_size if artifact.onnx_path else None
        return ScenarioResult(
            precision=opts.precision,
            metrics=metrics,
            batch_size=opts.batch_size,
            seq_len=seq_len,
            model={"params": model.params, "source": model.source, "size_bytes": size},
            backend={"device": session.device},
        )


@hookimpl
def harness_register_scenarios(registry: Any) -> None:
    registry.add_scenario(InferenceScenario)
