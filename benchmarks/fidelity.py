"""Fidelity of harness numbers against bare loops and vendor tools, in one run.

Run: ``.venv/bin/python benchmarks/fidelity.py [--quick]``. Prints one Markdown table:

- overhead: harness p50 (real CLI, default process isolation) / p50 of a bare loop over an
  identical ONNX Runtime session, on bert_tiny and bert_base (target <= 1.02); this is
  also the "harness ORT latency vs an equivalent bare ORT loop" row;
- OpenVINO: harness offline throughput / ``benchmark_app -hint throughput`` on the same
  ONNX and precision (target >= 1.00);
- MFU: each fp32 path on bert_base (ORT single-stream, OpenVINO offline) against this
  host's measured fp32 GEMM peak (best of torch, ONNX Runtime and OpenVINO GEMMs; see
  harness/roofline.py); the target (>= 0.80) is for the best path. An MFU the harness
  refused to give (null: the run beat the peak even after re-measuring) is shown as such,
  never as 0. The peak itself is printed under the table: its winning library, every
  library's best and the load average when it was measured.

Ratios only, measured side by side; speed is never asserted in tests/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import compression  # noqa: E402  (benchmarks/compression.py)
import overhead  # noqa: E402  (benchmarks/overhead.py)


def overhead_row(model: str, rounds: int, iterations: int, results: Path) -> tuple[float, dict]:
    args = argparse.Namespace(
        model=model, backend="onnxruntime", batch_size=8, seq_len=128, rounds=rounds, iterations=iterations, warmup=max(3, iterations // 10)
    )
    session, inputs = overhead.bare_session(args)
    bare, harness = [], []
    for _ in range(rounds):
        bare.extend(overhead.bare_loop(session, inputs, args.warmup, iterations))
        harness.extend(overhead.harness_round(args, results))
    record = compression.harness_run([*overhead.overrides(args), f"scenario.min_iters={iterations}", "scenario.min_duration_s=0"], results)
    return statistics.median(harness) / statistics.median(bare), record


def openvino_row(model: str, seconds: int, results: Path) -> tuple[float, dict]:
    record = compression.harness_run(
        [
            "+scenario=bert_fp32",
            "backend=openvino",
            f"model={model}",
            "scenario.load=offline",
            f"scenario.min_duration_s={seconds}",
            "++scenario.accuracy.enabled=false",
        ],
        results,
    )
    app = compression.benchmark_app(compression.source_file(record), 8, 128, "f32", seconds)
    return record["metrics"]["throughput"]["samples_per_s"] / app["samples_per_s"], record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bert_tiny only, few rounds (a smoke run)")
    parser.add_argument("--results", type=Path, help="keep the runs' records in this folder (default: a temp folder)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        results = args.results or Path(tmp)
        results.mkdir(parents=True, exist_ok=True)
        ratio, _ = overhead_row("bert_tiny", 2 if args.quick else 6, 100 if args.quick else 300, results)
        rows.append(("overhead p50, bert_tiny, ORT (isolation on)", ratio, "<= 1.02", ratio <= 1.02))
        fp32_paths = {}
        if not args.quick:
            ratio, fp32_paths["onnxruntime single_stream"] = overhead_row("bert_base", 2, 20, results)
            rows.append(("overhead p50, bert_base, ORT (isolation on)", ratio, "<= 1.02", ratio <= 1.02))
        model = "bert_tiny" if args.quick else "bert_base"
        ratio, fp32_paths["openvino offline"] = openvino_row(model, 5 if args.quick else 15, results)
        rows.append((f"OpenVINO offline / benchmark_app, {model} fp32", ratio, ">= 1.00", ratio >= 1.0))
        if not args.quick:
            for path, record in fp32_paths.items():
                mfu = record["metrics"].get("mfu")
                rows.append((f"MFU, bert_base fp32, {path} vs measured fp32 GEMM peak", mfu, ">= 0.80 (best path)", mfu is not None and mfu >= 0.80))
    print("| check | ratio | target | met |")
    print("|---|---|---|---|")
    for name, value, target, met in rows:
        shown = "null (no honest MFU)" if value is None else f"{value:.3f}"
        print(f"| {name} | {shown} | {target} | {'yes' if met else 'no'} |")
    for path, record in fp32_paths.items():
        print(peak_line(path, record["metrics"].get("roofline") or {}))


def peak_line(path: str, roof: dict) -> str:
    """What the MFU of ``path`` was divided by: the peak, who set it, every candidate, the load."""
    if "peak_flops_per_s" not in roof:
        return f"- {path}: no peak ({roof.get('reason', 'no roofline section')})"
    candidates = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in sorted((roof.get("peak_candidates") or {}).items()))
    line = (
        f"- {path}: achieved {roof['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({roof['flops_per_sample'] / 1e9:.2f} GFLOP/sample); fp32 GEMM peak {roof['peak_flops_per_s'] / 1e9:.0f} GFLOP/s "
        f"set by {roof.get('peak_library')} at n={roof.get('peak_size')} (candidates, GFLOP/s: {candidates}; "
        f"1-min load average {roof.get('peak_load_average_1m') or 0:.1f} when measured)"
    )
    return line + (f"; {roof['reason']}" if roof.get("reason") else "")


if __name__ == "__main__":
    main()
