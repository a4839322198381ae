"""The fixed cost of a run: wall time outside the measurement window, harness vs a bare script.

Run: ``.venv/bin/python benchmarks/run_overhead.py [--models bert_tiny,bert_base]
[--backends onnxruntime,pytorch] [--jobs 3] [--duration 2] [--reuse] [--harness A,B]``.
``--harness`` names several ``harness`` executables (e.g. two venvs holding the code
before and after a change): their runs alternate, so load drift on a shared machine
hits each alike.

For each model and backend, with warm caches (one untimed run of each side first):

- **single**: one ``harness +scenario=bert_fp32`` run with the default launcher (a fresh
  run process); wall time measured here around the command, the measurement window from
  its record (``metrics.stages.measure``);
- **sweep**: one ``harness -m`` command of ``--jobs`` jobs (``hardware.label`` varies,
  which names the machine in reports and changes no work); per job = (wall - sum of the windows) / jobs, and the last job's
  own ``metrics.outside_window_s`` (what one more job adds: the first pays the start-up);
- **sweep, reused worker** (``--reuse``): the same sweep with ``launcher.reuse_worker=true``;
- **bare** (the better of two runs): this file with ``--bare`` in a fresh interpreter doing the same work in one
  process: import torch and transformers, build the model from the same config, open the
  same cached ONNX file with ONNX Runtime (or keep the eager module), one validation call
  against eager, then the same timed loop (warm-up calls, then >= 20 calls and >=
  ``--duration`` s). Its wall time minus its own window is the floor.

Both sides skip the accuracy pass and the roofline (``scenario.accuracy.enabled=false
scenario.mfu=false``; both are on by default and cost extra) and take no host lock. The
table gives each mode's seconds outside the window and the ratio to the bare script. A
benchmark, not a test: tests never assert speed. The machine load goes beside the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HARNESS = Path(sys.executable).with_name("harness")
ROOT = Path(__file__).resolve().parent.parent


def harness_args(args: argparse.Namespace, model: str, backend: str) -> list[str]:
    return [
        "+scenario=bert_fp32",
        f"backend={backend}",
        f"model={model}",
        f"scenario.batch_size={args.batch_size}",
        f"scenario.seq_len={args.seq_len}",
        f"scenario.min_duration_s={args.duration}",
        "scenario.accuracy.enabled=false",
        "scenario.mfu=false",
        "launcher.host_lock=false",
    ]


def run_harness(extra: list[str], results: Path, harness: Path = HARNESS) -> tuple[float, list[dict[str, Any]]]:
    """Wall seconds of one ``harness`` command and the records it wrote."""
    before = set(results.glob("*.json"))
    started = time.monotonic()
    proc = subprocess.run([str(harness), *extra, f"results_dir={results}"], capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"harness failed ({proc.returncode}): {' '.join(extra)}\n{proc.stderr[-3000:]}")
    written = [json.loads(path.read_text()) for path in sorted(set(results.glob("*.json")) - before)]
    return wall, written


def run_bare(args: argparse.Namespace, model: str, backend: str, onnx_path: str | None) -> tuple[float, float]:
    """Wall seconds of the bare script in a fresh interpreter, and its measurement window."""
    command = [
        sys.executable,
        __file__,
        "--bare",
        "--models",
        model,
        "--backends",
        backend,
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--duration",
        str(args.duration),
    ]
    if onnx_path:
        command += ["--onnx", onnx_path]
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"bare script failed: {proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])["window_s"]


def onnx_file(record: dict[str, Any]) -> str | None:
    """The cached ONNX file the harness run used (its export key names the cache entry)."""
    from harness.cache import cache_root

    export = record["metrics"].get("export")
    if not export:
        return None
    found = sorted((cache_root(None) / "onnx" / export["key"]).glob("*.onnx"))
    return str(found[0]) if found else None


def bare(args: argparse.Namespace) -> None:
    """The bare side, in this interpreter: everything the run needs, nothing else."""
    import numpy as np
    import torch
    import transformers
    import yaml

    node = yaml.safe_load((ROOT / "conf" / "model" / f"{args.models}.yaml").read_text())
    config = transformers.BertConfig(**node["config"], num_labels=node.get("num_labels", 2))
    module = transformers.BertForSequenceClassification(config).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, size=(args.batch_size, args.seq_len), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with torch.inference_mode():
        reference = module(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    if args.backends == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        feed = {k: v for k, v in feed.items() if k in names}

        def call() -> Any:
            return session.run(None, feed)[0]
    else:
        tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

        def call() -> Any:
            with torch.inference_mode():
                return module(**tensors).logits.numpy()

    diff = float(np.max(np.abs(call() - reference)))  # the one validation
    for _ in range(5):
        call()
    calls, started = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        if calls >= 20 and time.perf_counter() - started >= args.duration:
            break
    print(json.dumps({"window_s": time.perf_counter() - started, "calls": calls, "max_abs_diff": diff}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert_tiny,bert_base")
    parser.add_argument("--backends", default="onnxruntime,pytorch")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--duration", type=float, default=2.0, help="measurement window, seconds")
    parser.add_argument("--jobs", type=int, default=3, help="jobs in each sweep")
    parser.add_argument("--reuse", action="store_true", help="also a sweep with launcher.reuse_worker=true")
    parser.add_argument("--harness", default=str(HARNESS), help="harness executables to compare, comma-separated")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--onnx", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare(args)
        return

    executables = [Path(path) for path in args.harness.split(",")]
    label = {path: (path.parent.parent.name if len(executables) > 1 else "") for path in executables}
    rows = []
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)", flush=True)
    with tempfile.TemporaryDirectory(prefix="harness-run-overhead-") as folder:
        results = Path(folder)
        for model in args.models.split(","):
            for backend in args.backends.split(","):
                base = harness_args(args, model, backend)
                _, (warm,) = run_harness(base, results, executables[-1])  # warm caches (export, dataset, page cache)
                onnx = onnx_file(warm) if backend == "onnxruntime" else None
                floor = min(wall - window for wall, window in (run_bare(args, model, backend, onnx) for _ in range(2)))
                sweep = [
                    "-m",
                    *base,
                    "overwrite=true",  # every job runs (no resume from an earlier record)
                    "hardware.label=" + ",".join(f"job{i}" for i in range(args.jobs)),  # distinct jobs, the same work
                ]
                modes = [("single", base, 1), ("sweep", sweep, args.jobs)]
                if args.reuse:
                    modes.append(("sweep, reused worker", [*sweep, "launcher.reuse_worker=true"], args.jobs))
                for mode, command, jobs in modes:
                    for harness in executables:
                        if "reuse_worker" in " ".join(command) and harness != executables[-1]:
                            continue  # only the last executable is assumed to have the option
                        wall, written = run_harness(command, results, harness)
                        window = sum(r["metrics"]["stages"]["measure"] for r in written)
                        outside = (wall - window) / jobs
                        others = {k: v for k, v in written[-1]["metrics"]["stages"].items() if k != "measure"}
                        top = max(others.items(), key=lambda item: item[1])
                        last = written[-1]["metrics"]["outside_window_s"]  # a sweep's marginal job
                        rows.append(
                            (
                                model,
                                backend,
                                f"{mode} {label[harness]}".strip(),
                                jobs,
                                wall,
                                window / jobs,
                                outside,
                                last,
                                floor,
                                outside / floor,
                                f"{top[0]} {top[1]:.1f}",
                            )
                        )
                        print(" | ".join(str(x) for x in rows[-1]), flush=True)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)")
    print()
    print(
        "| model | backend | mode | jobs | wall s | window s/job | outside s/job | last job outside s | bare outside s "
        "| ratio | largest other stage of the last job (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, backend, mode, jobs, wall, window, outside, last, floor, ratio, top in rows:
        print(f"| {model} | {backend} | {mode} | {jobs} | {wall:.1f} | {window:.1f} | {outside:.1f} | {last:.1f} | {floor:.1f} | {ratio:.2f}× | {top} |")


if __name__ == "__main__":
    main()
