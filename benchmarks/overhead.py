"""Harness measurement overhead: harness-reported p50 / bare-loop p50 on the same session.

Run: ``.venv/bin/python benchmarks/overhead.py [--model bert_tiny] [--rounds 5]``.
Both loops time the same prepared ONNX Runtime session on the same inputs, in
alternating rounds (bare, harness, bare, harness...) so drift hits both alike. The
ratio is printed; the target is <= 1.02. A benchmark, not a test: speed is never
asserted in tests/.
"""

from __future__ import annotations

import argparse
import statistics
import time

from harness.config import typed
from harness.data import DatasetOptions, load_dataset
from harness.export import export_onnx
from harness.backend import Artifact
from harness.measure import MeasurePlan, measure
from harness.models import ModelOptions, load_model
from harness.plugins import load_plugins
from hydra import compose, initialize_config_module


def model_options(name: str) -> ModelOptions:
    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={name}"])
    return typed(ModelOptions, dict(cfg.model), "model")


def bare_loop(session, inputs, iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(inputs)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert_tiny")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()

    model = load_model(model_options(args.model))
    data = load_dataset(DatasetOptions(), seq_len=args.seq_len)
    batch = data.sample_batch(args.batch_size)
    backend_cls = load_plugins().registry.backend(args.backend)
    backend = backend_cls(typed(backend_cls.options_type, {}, "backend"))
    artifact = Artifact(model.name, model.input_names, model.output_names, module=model.module)
    if "onnx" in backend.capabilities().consumes:
        artifact.onnx_path = export_onnx(model, data.sample_batch(2)).path
    session = backend.prepare(artifact, "fp32")
    inputs = session.load(batch)
    bare_loop(session, inputs, 20)  # warm-up

    bare, harness = [], []
    plan = MeasurePlan(warmup_iters=0, min_iters=args.iterations, min_duration_s=0.0, max_iters=args.iterations)
    for _ in range(args.rounds):
        bare.extend(bare_loop(session, inputs, args.iterations))
        harness.extend(measure(session, inputs, plan).samples_ms)
    bare_p50, harness_p50 = statistics.median(bare), statistics.median(harness)
    ratio = harness_p50 / bare_p50
    print(f"| model | backend | bare p50 ms | harness p50 ms | ratio | target <= 1.02 |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.backend} | {bare_p50:.3f} | {harness_p50:.3f} | {ratio:.3f} | {'met' if ratio <= 1.02 else 'MISSED'} |")


if __name__ == "__main__":
    main()
