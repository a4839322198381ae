"""Inference scenario: (prune) -> export -> (compress) -> validate -> time -> score accuracy.

Flow: build model -> data -> [pruning, before export] -> artifact (ONNX export when the
backend consumes ONNX) -> [compression recipe for int8, or a backend's fp16/bf16
conversion] -> backend session -> output-validation gate against the eager fp32 model
that was exported -> warm-up + single-stream measurement (+ ``offline`` throughput with
the session's ``run_many``) -> accuracy on the eval split beside the fp32 reference
-> metrics. The work of each stage lives in :mod:`harness.compression` and
:mod:`harness.accuracy`; this module only orders them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from typing import Any, Optional

import numpy as np

from harness import stages, stats
from harness.accuracy import AccuracyGate, run_accuracy
from harness.compression.pipeline import artifact_size
from harness.compression.pruning import PruningOptions
from harness.compression.recipes import QuantizationOptions, recipe_for
from harness.columns import Column
from harness.config import choice, require
from harness.errors import Mismatch
from harness.export import cached_eager_outputs
from harness.hookspecs import hookimpl
from harness.loadgen import server_metrics
from harness.measure import MeasurePlan, measure
from harness.roofline import roofline_metrics
from harness.scenario import RunContext, Scenario, ScenarioResult

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
LOADS = ("single_stream", "offline", "server")


@dataclass
class AccuracyOptions:
    """``scenario.accuracy.*``: score every run on the eval split (``limit`` rows, 0 = all).

    ``min_relative``: the run is ``mismatch`` when its score falls below this fraction of
    the fp32 reference (null = report only).
    """

    enabled: bool = True
    limit: int = 0
    min_relative: Optional[float] = None

    def __post_init__(self) -> None:
        require(self.limit >= 0, "accuracy.limit", f"must be >= 0 (0 = the whole eval split), got {self.limit}")
        require(self.min_relative is None or 0 < self.min_relative <= 1.5, "accuracy.min_relative", f"must be in (0, 1.5] or null, got {self.min_relative}")


@dataclass
class ServerOptions:
    """``scenario.server.*``: the MLPerf-style server load (``scenario.load=server``).

    Poisson arrivals at ``qps`` (null: half the single-stream capacity), VALID when the
    p99 latency stays within ``latency_bound_ms``; ``search`` bisects for the highest
    valid QPS.
    """

    qps: Optional[float] = None
    latency_bound_ms: float = 100.0
    queries: int = 500
    search: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.qps is None or self.qps > 0, "server.qps", f"must be > 0 or null, got {self.qps}")
        require(self.latency_bound_ms > 0, "server.latency_bound_ms", f"must be > 0, got {self.latency_bound_ms}")
        require(self.queries >= 10, "server.queries", f"must be >= 10, got {self.queries}")


@dataclass
class InferenceOptions:
    """``scenario.*`` keys of ``kind: inference``.

    ``load``: ``single_stream`` times one call at a time; ``offline`` also measures
    throughput with as many calls in flight as the session sustains (``run_many``);
    ``server`` also serves Poisson arrivals (see :class:`ServerOptions`). ``mfu`` adds
    the measured GEMM peak and model FLOPs utilisation.
    """

    precision: str = "fp32"
    batch_size: int = 8
    seq_len: int = 128
    warmup_iters: int = 5
    min_iters: int = 20
    min_duration_s: float = 3.0
    max_duration_s: float = 60.0
    keep_samples: bool = True
    load: str = "single_stream"
    server: ServerOptions = field(default_factory=ServerOptions)
    mfu: bool = True
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    pruning: PruningOptions = field(default_factory=PruningOptions)
    accuracy: AccuracyOptions = field(default_factory=AccuracyOptions)

    def __post_init__(self) -> None:
        choice(self.precision, PRECISIONS, "precision")
        choice(self.load, LOADS, "load")
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
        "noise": stats.noise_report(samples_ms),
    }


def offline_throughput(calls: int, seconds: float, batch_size: int) -> float:
    """Offline throughput: samples of every completed call over the wall time they took."""
    if seconds <= 0 or calls < 1:
        raise ValueError("offline throughput needs at least one call and a positive duration")
    return calls * batch_size / seconds


class InferenceScenario(Scenario):
    kind = "inference"
    options_type = InferenceOptions
    report_columns = (
        # scenario.load=server: the MLPerf-style verdict at the offered load
        Column("metrics.server.target_qps", "Server QPS", "number"),
        Column("metrics.server.latency_at_percentile_ms", "Server p99 (ms)", "number", "lower"),
        Column("metrics.server.latency_bound_ms", "p99 bound (ms)", "number"),
        Column("metrics.server.result", "Server", "text"),
        Column("metrics.server.max_valid_qps", "Max valid QPS", "number", "higher"),
        # scenario.pruning: what was removed, and the speed against the unpruned fp32 row
        Column("metrics.pruning.params_after", "Params", "integer", "lower", when="metrics.pruning.method"),
        Column("metrics.pruning.sparsity.all", "Sparsity", "percent", when="metrics.pruning.method"),
        Column(
            "metrics.throughput.samples_per_s", "Speedup vs unpruned fp32", "ratio", "higher", vs={"scenario.precision": "fp32"}, when="metrics.pruning.method"
        ),
    )

    def run(self, ctx: RunContext) -> ScenarioResult:
        opts: InferenceOptions = self.options
        backend = ctx.backend
        backend.check_precision(opts.precision)
        reference_model = ctx.load_model()
        data = ctx.load_data(opts.seq_len, reference_model.tokenizer)
        seq_len = opts.seq_len if data.task == "text-classification" else None
        batch = data.sample_batch(opts.batch_size)
        metrics: dict[str, Any] = {}

        model = reference_model
        if opts.pruning.enabled:
            model, metrics["pruning"] = self._prune(ctx, reference_model)
        artifact, stage_metrics = ctx.artifact(model, data, batch)
        metrics.update(stage_metrics)
        recipe = recipe_for(opts.precision, opts.quantization, ctx.spec.model.family, backend.capabilities().recipes)
        if recipe is not None:
            source_key = stage_metrics["export"]["key"] if "export" in stage_metrics else model.weights_digest()
            artifact, metrics["compression"] = ctx.compressed(artifact, recipe, data, source_key, opts.quantization.calibration_batch_size)

        ctx.status(f"preparing {backend.name} session ({opts.precision})")
        with stages.timed("prepare"):
            session = backend.prepare(artifact, opts.precision)
            inputs = session.load(batch)
        with stages.timed("validate"):
            metrics["validation"] = self._validate(session, inputs, model, batch, backend, ctx.cache_root)

        ctx.status(f"measuring: {opts.warmup_iters} warm-up calls, then >= {opts.min_iters} calls and >= {opts.min_duration_s:g} s")
        plan = MeasurePlan(opts.warmup_iters, opts.min_iters, opts.min_duration_s, opts.max_duration_s)
        progress = (lambda n, s: ctx.progress("measuring", n, s)) if ctx.progress else None
        measurement = measure(session, inputs, plan, progress)
        with stages.timed("statistics"):  # percentiles, and bootstrap CIs through scipy (imported here)
            metrics.update(latency_metrics(measurement.samples_ms, opts.batch_size, seq_len, opts.keep_samples))
        metrics["window"] = {"start": measurement.started_at, "end": measurement.ended_at}
        if metrics["noise"]["noisy"]:
            ctx.status(f"warning: noisy run: latency CV {metrics['noise']['cv']:.2f} > {metrics['noise']['cv_threshold']:.2f}")
        if opts.load == "offline":
            with stages.timed("offline"):
                self._offline(ctx, session, inputs, metrics, seq_len)
        if opts.load == "server":
            ctx.status(f"server: {opts.server.queries} Poisson arrivals, p99 bound {opts.server.latency_bound_ms:g} ms")
            capacity = 1000.0 / metrics["latency_ms"]["p50"]
            with stages.timed("server"):
                metrics["server"] = server_metrics(lambda: session.run(inputs), opts.server, capacity)
        if opts.mfu:
            with stages.timed("roofline"):
                metrics.update(self._roofline(ctx, model, batch, metrics["throughput"]["samples_per_s"], session.device))
        memory = session.memory()
        if memory:
            metrics["memory_mib"] = memory
        engine = session.metrics()
        if engine:
            metrics["backend"] = engine  # plugin API 2: engine facts under metrics.backend
            metrics.update(engine)  # plugin API 1 merged them at the top (e.g. metrics.xla); kept for one release

        if opts.accuracy.enabled:
            ctx.status(f"scoring accuracy on the eval split ({opts.accuracy.limit or len(data.eval)} examples)")
            with stages.timed("accuracy"):
                metrics["accuracy"] = run_accuracy(session, reference_model, data, opts.batch_size, model.output_names[0], opts.accuracy.limit, ctx.cache_root)
        session.close()
        gate = AccuracyGate(opts.accuracy.min_relative)
        problem = gate.problem(metrics["accuracy"]) if opts.accuracy.enabled else None
        if problem:
            raise Mismatch(
                f"{backend.name} {opts.precision}: {problem}",
                "use a gentler recipe (scenario.quantization.*, scenario.pruning.*) or lower scenario.accuracy.min_relative",
            )
        return ScenarioResult(
            precision=opts.precision,
            metrics=metrics,
            batch_size=opts.batch_size,
            seq_len=seq_len,
            model={"params": model.params, "source": model.source, "size_bytes": artifact_size(artifact), "built": reference_model.built or model.built},
            backend={"device": session.device},
        )

    def _prune(self, ctx: RunContext, reference_model: Any) -> tuple[Any, dict[str, Any]]:
        """The pruned (and fine-tuned) copy of the model; the reference stays untouched."""
        from harness.compression.pruning import prune

        options = self.options.pruning
        train_data = ctx.load_data(options.finetune_seq_len, reference_model.tokenizer)
        trainer = ctx.trainer() if options.finetune_steps else None
        return prune(reference_model, train_data, options, cache_root=ctx.cache_root, trainer=trainer, report=ctx.status)

    def _validate(self, session: Any, inputs: Any, model: Any, batch: Any, backend: Any, cache_root: str | None) -> dict[str, Any]:
        """Outputs within the backend's tolerance of the eager fp32 model that was exported
        (its outputs on this batch are cached: see :func:`harness.export.cached_eager_outputs`)."""
        precision = self.options.precision
        got = session.fetch(session.run(inputs))[model.output_names[0]]
        reference = cached_eager_outputs(model, batch, cache_root)
        diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
        tolerance = backend.capabilities().tolerance.get(precision, 1e-3)
        if not diff <= tolerance:
            raise Mismatch(
                f"{backend.name} {precision} outputs differ from eager fp32 by {diff:.3g} (tolerance {tolerance})",
                "the backend's result is wrong at this precision; report it to the backend's maintainers",
            )
        return {"max_abs_diff": diff, "tolerance": tolerance}

    def _roofline(self, ctx: RunContext, model: Any, batch: Any, samples_per_s: float, device: str) -> dict[str, Any]:
        """MFU against this host's measured GEMM peak at the run's precision (cached per host)."""
        from harness import hardware

        fingerprint = hardware.fingerprint(hardware.cpu_model(), os.cpu_count() or 1, ctx.backend.device_info())
        ctx.status("roofline: FLOPs per sample and this host's measured GEMM peak (measured once under the host lock, cached)")
        held = bool((ctx.spec.config.get("launcher") or {}).get("host_lock"))  # the launcher took it for this run
        return roofline_metrics(
            lambda: model.module,
            batch,
            samples_per_s,
            self.options.precision,
            device,
            fingerprint,
            ctx.cache_root,
            host_lock_held=held,
            structure=model.structure(),
        )

    def _offline(self, ctx: RunContext, session: Any, inputs: Any, metrics: dict[str, Any], seq_len: int | None) -> None:
        """Offline throughput with the session's in-flight calls; single-stream figures kept beside it."""
        opts: InferenceOptions = self.options
        ctx.status(f"offline: {session.in_flight} call(s) in flight for >= {opts.min_duration_s:g} s")
        session.run_many(inputs, max(1, opts.warmup_iters) * session.in_flight, 0.0)
        calls, seconds = session.run_many(inputs, opts.min_iters, opts.min_duration_s)
        per_s = offline_throughput(calls, seconds, opts.batch_size)
        single = metrics["throughput"]["samples_per_s"]
        metrics["throughput"] = {
            "samples_per_s": per_s,
            "tokens_per_s": stats.tokens_per_second(per_s, seq_len) if seq_len else None,
            "load": "offline",
            "single_stream_samples_per_s": single,
        }
        metrics["offline"] = {"calls": calls, "seconds": seconds, "in_flight": session.in_flight}


@hookimpl
def harness_register_scenarios(registry: Any) -> None:
    registry.add_scenario(InferenceScenario)
