"""int8 vs fp32 throughput per backend, and harness OpenVINO vs ``benchmark_app``.

Run: ``.venv/bin/python benchmarks/compression.py [--model bert_base] [--checkpoint auto]``.

1. For each backend, ``harness +scenario=bert_fp32`` and ``+scenario=bert_int8`` (its best
   int8 recipe, ``mode=auto``) on the same weights, run through the real CLI. ONNX Runtime
   and PyTorch are timed single-stream; OpenVINO with ``performance_hint=throughput`` and
   ``scenario.load=offline`` (an ``AsyncInferQueue`` of OpenVINO's optimal request count).
   Accuracy is scored on ``--accuracy-limit`` eval examples beside the fp32 reference.
2. Right after each OpenVINO run, ``benchmark_app -hint throughput`` runs on the very same
   file (the cached ONNX for fp32, the NNCF IR for int8) with the same shape and
   inference precision; throughput = iterations x batch / duration from its report.

Prints a Markdown table of ratios measured within this one run. A benchmark, not a
test: speed is never asserted in tests/. On a shared machine the figures are noisy;
compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import cache

BIN = Path(sys.executable).parent


def harness_run(args: list[str], results: Path) -> dict[str, Any]:
    """Run the ``harness`` CLI once and return the record it wrote."""
    before = set(results.glob("*.json"))
    proc = subprocess.run([str(BIN / "harness"), *args, f"results_dir={results}"], capture_output=True, text=True)
    written = sorted(set(results.glob("*.json")) - before)
    if not written:
        raise SystemExit(f"harness {' '.join(args)} wrote no record:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    record = json.loads(written[-1].read_text())
    print(
        f"  {record['scenario']['name']:10s} {record['backend']['name']:12s} {record['status']:8s} "
        f"{(record['metrics'].get('throughput') or {}).get('samples_per_s', 0):9.1f} samples/s  {record['reason'][:120]}",
        flush=True,
    )
    return record


def benchmark_app(model: Path, batch: int, seq_len: int, precision: str, seconds: int) -> dict[str, float]:
    """``benchmark_app -hint throughput`` on ``model``; samples/s from its count and duration."""
    shape = f"input_ids[{batch},{seq_len}],attention_mask[{batch},{seq_len}]"
    command = [
        str(BIN / "benchmark_app"),
        "-m",
        str(model),
        "-d",
        "CPU",
        "-hint",
        "throughput",
        "-shape",
        shape,
        "-infer_precision",
        precision,
        "-t",
        str(seconds),
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    count = re.search(r"Count:\s+(\d+)\s+iterations", text)
    duration = re.search(r"Duration:\s+([\d.]+)\s+ms", text)
    requests = re.search(r"(\d+) inference requests", text)
    if not (count and duration):
        raise SystemExit(f"could not read benchmark_app's report:\n{text[-3000:]}")
    iterations, ms = int(count.group(1)), float(duration.group(1))
    return {"samples_per_s": iterations * batch / (ms / 1000.0), "iterations": iterations, "requests": int(requests.group(1)) if requests else 0}


def source_file(record: dict[str, Any]) -> Path:
    """The file the OpenVINO session compiled: the NNCF IR for int8, the exported ONNX otherwise."""
    metrics = record["metrics"]
    if metrics.get("compression", {}).get("key"):
        return cache.cache_dir() / "compressed" / metrics["compression"]["key"] / "model.xml"
    return cache.cache_dir() / "onnx" / metrics["export"]["key"] / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert_base")
    parser.add_argument("--checkpoint", default="auto", help="model.checkpoint (auto trains the bert_train recipe once)")
    parser.add_argument("--backends", default="onnxruntime,openvino,pytorch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--min-duration", type=float, default=10.0)
    parser.add_argument("--accuracy-limit", type=int, default=200)
    parser.add_argument("--benchmark-app-seconds", type=int, default=15)
    args = parser.parse_args()

    results = Path(tempfile.mkdtemp(prefix="harness-compression-bench-"))
    common = [
        f"model={args.model}",
        f"++model.checkpoint={args.checkpoint}",
        f"scenario.batch_size={args.batch_size}",
        f"scenario.seq_len={args.seq_len}",
        "scenario.min_iters=10",
        f"scenario.min_duration_s={args.min_duration}",
        "scenario.max_duration_s=600",
        f"scenario.accuracy.limit={args.accuracy_limit}",
    ]
    rows, openvino_rows = [], []
    for backend in args.backends.split(","):
        extra = [f"backend={backend}"]
        if backend == "openvino":
            extra += ["backend.performance_hint=throughput", "scenario.load=offline"]
        runs = {}
        for scenario in ("bert_fp32", "bert_int8"):
            gate = ["scenario.accuracy.min_relative=null"] if scenario == "bert_int8" else []
            runs[scenario] = record = harness_run([f"+scenario={scenario}", *common, *extra, *gate], results)
            if backend == "openvino" and record["status"] == "ok":  # f32 hint: what the harness set for fp32 and int8
                app = benchmark_app(source_file(record), args.batch_size, args.seq_len, "f32", args.benchmark_app_seconds)
                mine = record["metrics"]["throughput"]["samples_per_s"]
                openvino_rows.append(
                    (
                        scenario,
                        mine,
                        app["samples_per_s"],
                        mine / app["samples_per_s"],
                        record["metrics"].get("offline", {}).get("in_flight"),
                        app["requests"],
                        source_file(record).name,
                    )
                )
                print(f"  benchmark_app {scenario}: {app['samples_per_s']:.1f} samples/s", flush=True)
        fp32, int8 = runs["bert_fp32"], runs["bert_int8"]
        if fp32["status"] == "ok" and int8["status"] == "ok":
            accuracy = int8["metrics"]["accuracy"]
            rows.append(
                (
                    backend,
                    int8["metrics"]["compression"]["recipe"]["name"],
                    fp32["metrics"]["throughput"]["samples_per_s"],
                    int8["metrics"]["throughput"]["samples_per_s"],
                    accuracy["reference"],
                    accuracy["value"],
                    accuracy["relative"],
                    accuracy["agreement"],
                    fp32["metrics"]["throughput"].get("load", "single_stream"),
                )
            )
        else:
            rows.append((backend, f"{fp32['status']}/{int8['status']}: {int8['reason'][:80]}", 0, 0, 0, 0, 0, 0, "-"))

    print(
        f"\nmodel {args.model}, batch {args.batch_size}, seq {args.seq_len}, checkpoint {args.checkpoint}, "
        f"accuracy on {args.accuracy_limit} eval examples; records in {results}\n"
    )
    print("| backend | int8 recipe | load | fp32 samples/s | int8 samples/s | int8/fp32 | fp32 acc | int8 acc | relative | agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backend, recipe, f, i, ref, val, rel, agr, load in rows:
        ratio = f"{i / f:.2f}x" if f else "-"
        print(f"| {backend} | {recipe} | {load} | {f:.1f} | {i:.1f} | {ratio} | {ref:.3f} | {val:.3f} | {rel:.4f} | {agr:.3f} |")
    if openvino_rows:
        print("\n| OpenVINO throughput | harness samples/s | benchmark_app samples/s | harness / benchmark_app | requests (harness / app) | file |")
        print("|---|---|---|---|---|---|")
        for scenario, mine, app, ratio, in_flight, app_requests, name in openvino_rows:
            print(f"| {scenario} | {mine:.1f} | {app:.1f} | {ratio:.3f} | {in_flight} / {app_requests} | {name} |")


if __name__ == "__main__":
    main()
