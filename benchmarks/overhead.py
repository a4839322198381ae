"""Harness measurement overhead, end to end: the real ``harness`` CLI vs a bare loop.

Run: ``.venv/bin/python benchmarks/overhead.py [--model bert_tiny] [--rounds 5]``.

The harness side is the installed ``harness`` command with its default launcher
(``launcher.isolation=process``): a parent CLI process waiting on a spawned run
process, which is what a user gets. Its p50 comes from the records it writes.
The bare side is a ``perf_counter`` loop in this process over an identical session:
the same composed config, built through the same :class:`harness.scenario.RunContext`
steps (model, data, cached ONNX export, ``backend.prepare``), on the same batch.

Rounds alternate (bare, harness, bare, harness...) so drift on a shared machine hits
both sides alike; samples are pooled per side and the ratio of the pooled medians is
printed with each round's pair. The target is <= 1.02. While the harness round runs,
this process is blocked in ``subprocess.run`` and its session idle, so the two sides
never measure at the same time. A benchmark, not a test: tests never assert speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HARNESS = Path(sys.executable).with_name("harness")


def overrides(args: argparse.Namespace) -> list[str]:
    """The run both sides measure (accuracy scoring off: it happens after timing anyway)."""
    return [
        "+scenario=bert_fp32",
        f"backend={args.backend}",
        f"model={args.model}",
        f"scenario.batch_size={args.batch_size}",
        f"scenario.seq_len={args.seq_len}",
        "++scenario.accuracy.enabled=false",
    ]


def bare_session(args: argparse.Namespace):
    """A prepared session and its inputs, built exactly as the inference scenario builds them."""
    from hydra import compose, initialize_config_module

    from harness.spec import build_spec
    from harness.plugins import load_plugins
    from harness.scenario import RunContext

    plugins = load_plugins()
    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides(args))
    spec = build_spec(cfg, plugins.registry)
    backend = plugins.registry.backend(spec.backend_name)(spec.backend_options)
    ctx = RunContext(spec=spec, backend=backend, status=lambda _message: None)
    model = ctx.load_model()
    data = ctx.load_data(spec.scenario_options.seq_len, model.tokenizer)
    batch = data.sample_batch(spec.scenario_options.batch_size)
    artifact, _ = ctx.artifact(model, data, batch)
    session = backend.prepare(artifact, spec.scenario_options.precision)
    return session, session.load(batch)


def bare_loop(session, inputs, warmup: int, iterations: int) -> list[float]:
    for _ in range(warmup):
        session.run(inputs)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(inputs)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def harness_round(args: argparse.Namespace, results: Path) -> list[float]:
    """One ``harness`` run with the default launcher; its recorded latency samples."""
    before = set(results.glob("*.json"))
    command = [
        str(HARNESS),
        *overrides(args),
        f"results_dir={results}",
        f"scenario.warmup_iters={args.warmup}",
        f"scenario.min_iters={args.iterations}",
        "scenario.min_duration_s=0",
        "scenario.max_duration_s=3600",
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"harness failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    (path,) = set(results.glob("*.json")) - before
    record = json.loads(path.read_text())
    assert record["launcher"]["isolation"] == "process", record["launcher"]
    return record["metrics"]["latency_ms"]["samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert_tiny")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    session, inputs = bare_session(args)
    bare: list[float] = []
    harness: list[float] = []
    print("| round | bare p50 ms | harness p50 ms | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="harness-overhead-") as folder:
        for round_ in range(1, args.rounds + 1):
            b = bare_loop(session, inputs, args.warmup, args.iterations)
            h = harness_round(args, Path(folder))
            bare += b
            harness += h
            b50, h50 = statistics.median(b), statistics.median(h)
            print(f"| {round_} | {b50:.3f} | {h50:.3f} | {h50 / b50:.3f} |", flush=True)
    bare_p50, harness_p50 = statistics.median(bare), statistics.median(harness)
    ratio = harness_p50 / bare_p50
    print()
    print("| model | backend | isolation | bare p50 ms | harness p50 ms | ratio | target <= 1.02 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {args.backend} | process | {bare_p50:.3f} | {harness_p50:.3f} | {ratio:.3f} | {'met' if ratio <= 1.02 else 'MISSED'} |")


if __name__ == "__main__":
    main()
