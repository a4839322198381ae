"""Memory per rank, throughput and scaling efficiency of each training strategy.

Run: ``.venv/bin/python benchmarks/parallel_training.py [--model bert_small] [--steps 30]``.

Through the real CLI, on the same model and data: the 1-process run (the baseline),
then ddp, fsdp, tp and pp on 2 processes, fsdp+tp on 4, and fsdp with activation
checkpointing and with bf16. Every run keeps ``scenario.batch_size`` per data-parallel
replica, so ddp/fsdp steps take twice the examples of tp/pp steps and all find the
1-process record as their scaling baseline (same config apart from the world).

Every process runs ``--threads`` intra-op threads (``OMP_NUM_THREADS``, default 1), the
1-process baseline included: with its default of all cores, the baseline alone would
compete with itself for the cores on a loaded machine (OpenMP spin-waits) and every
scaling efficiency would be measured against a distorted rate.

Prints a Markdown table from the records (rank 0's step time; memory of the rank that
holds the most model state). A benchmark, not a test: on a shared machine the times are
noisy; the memory columns are exact counts of the tensors each rank holds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compression import harness_run  # noqa: E402  (benchmarks/compression.py: one CLI run, its record)

#: (label, overrides) of each run after the 1-process baseline.
RUNS = [
    ("1 process", []),
    ("ddp x2", ["scenario.distributed.nproc_per_node=2", "scenario.distributed.strategy=ddp"]),
    ("fsdp x2", ["scenario.distributed.nproc_per_node=2", "scenario.distributed.strategy=fsdp"]),
    ("fsdp x2 + checkpointing", ["scenario.distributed.nproc_per_node=2", "scenario.distributed.strategy=fsdp", "scenario.activation_checkpointing=true"]),
    ("fsdp x2 bf16", ["scenario.distributed.nproc_per_node=2", "scenario.distributed.strategy=fsdp", "scenario.precision=bf16"]),
    ("tp x2", ["scenario.distributed.nproc_per_node=2", "scenario.distributed.strategy=tp"]),
    ("pp x2 (1f1b, 4 micro-batches)", ["scenario.distributed.nproc_per_node=2", "scenario.distributed.strategy=pp"]),
    ("fsdp+tp x4 [2, 2]", ["scenario.distributed.nproc_per_node=4", "scenario.distributed.strategy=fsdp+tp"]),
]


def row(label: str, record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"| {label} | {record['status']}: {record.get('reason')} |"
    t = record["metrics"]["training"]
    ranks = t.get("memory_per_rank") or [t["memory_mib"]]
    top = max(ranks, key=lambda r: r.get("model_state_mib") or 0)
    breakdown = t.get("step_breakdown") or {}
    share = breakdown.get("communication_share")
    eff = t.get("scaling_efficiency")
    return (
        f"| {label} | {t['samples_per_step']} | {t['step_latency_ms']['p50']:.0f} | {t['samples_per_s']:.1f} | "
        f"{'-' if eff is None else f'{eff:.2f}'} | {top['params_mib']:.1f} | {top['model_state_mib']:.1f} | "
        f"{top['activations_mib']:.1f} | {max(r['peak_rss_mib'] for r in ranks):.0f} | "
        f"{'-' if share is None else f'{share:.0%}'} | {t['loss_curve'][-1][1]:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert_small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process (OMP_NUM_THREADS)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the harness runs inherit it; torchrun workers keep it
    common = [
        "+scenario=bert_train",
        "backend=pytorch",
        f"model={args.model}",
        "dataset.train_size=2048",
        "dataset.eval_size=128",
        f"scenario.max_steps={args.steps}",
        "scenario.eval_interval=0",
        f"scenario.batch_size={args.batch_size}",
        "scenario.dropout=0",
        "scenario.warmup_steps_excluded=5",
        f"backend.threads={args.threads}",
    ]  # set_num_threads in every process, the workers too
    header = (
        "| run | samples/step | step p50 ms | samples/s | scaling eff. | params MiB/rank | model state MiB/rank "
        "| activations MiB/rank | peak RSS MiB | comm. share | final loss |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        for label, extra in RUNS:
            record = harness_run([*common, *extra], results)
            lines.append(row(label, record))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
