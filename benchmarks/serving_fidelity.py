"""Fidelity of the serving figures against independent measurements of the same server.

Run: ``.venv/bin/python benchmarks/serving_fidelity.py [--model llama_small] [--rate 0.5]``.
Prints Markdown tables of ratios (harness / reference; target within 5%, i.e. 0.95-1.05):

1. llama.cpp's ``llama-server`` on 127.0.0.1 (started here with the start script, or
   ``--url``) at a fixed constant request rate. The harness (``+scenario=llm_serve
   backend=openai``, the real CLI) against
   - guidellm on the same server, rate and workload, when a guidellm executable is given
     (``--guidellm PATH``; it pulls its own torch, so it lives in its own venv:
     ``python3 -m venv .venv-guidellm && .venv-guidellm/bin/pip install guidellm==0.8.1``): TTFT p50
     vs guidellm's ``time_to_first_token_ms`` p50, and TPOT p50 vs guidellm's
     ``inter_token_latency_ms`` p50 (guidellm's ITL is the per-request mean gap after
     the first token: the harness's TPOT, not its chunk-to-chunk ITL);
   - the server's own ``timings`` in every response (always): TTFT p50 vs the server's
     prompt processing time p50, and harness ITL p50 vs the server's time per generated
     token p50. The harness side includes HTTP and client time the server cannot see.
2. In-process llama.cpp (``+scenario=llm_fp32 backend=llamacpp``) decode tokens/s vs
   ``llama-bench`` tg on the same GGUF and thread count (target >= 0.98), interleaved
   (harness, bench, harness, bench) because a shared machine's load drifts; and, within each
   harness run, vs llama.cpp's own eval counters over the same calls (``llama_perf_context``).

The server runs with ``--no-cache-prompt``: guidellm's synthetic prompts share prefixes that
llama.cpp's prompt cache would otherwise serve, so the two clients would time different
server work (seen here: guidellm's TTFT below the server's own prompt time).

Speed is never asserted in tests; these figures belong in the README with the load of
the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = REPO / "scripts" / "llm-server"


def harness_record(args: list[str], results: Path) -> dict[str, Any]:
    """Run the real ``harness`` CLI and return its one record."""
    before = set(results.glob("*.json"))
    done = subprocess.run([str(BIN / "harness"), *args, f"results_dir={results}", "launcher.host_lock=false"], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"harness failed: {done.stderr.strip().splitlines()[-1:]}")
    (path,) = set(results.glob("*.json")) - before
    return json.loads(path.read_text())


def start_server(model: str, precision: str, parallel: int, threads: int, run_dir: Path) -> str:
    env = {**os.environ, "HARNESS_LLAMACPP_RUN": str(run_dir), "PY": sys.executable}
    done = subprocess.run(
        [
            str(SCRIPTS / "start-llamacpp.sh"),
            "--model",
            model,
            "--precision",
            precision,
            "--parallel",
            str(parallel),
            "--threads",
            str(threads),
            "--",
            "--no-cache-prompt",
        ],  # every request pays its whole prefill, whoever sends it
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"start-llamacpp.sh failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().split("=", 1)[1]


def stop_server(run_dir: Path) -> None:
    subprocess.run([str(SCRIPTS / "stop-llamacpp.sh")], env={**os.environ, "HARNESS_LLAMACPP_RUN": str(run_dir)})


def harness_serving(url: str, opts: argparse.Namespace, results: Path) -> dict[str, Any]:
    record = harness_record(
        [
            "+scenario=llm_serve",
            "backend=openai",
            f"backend.base_url={url}",
            f"model={opts.model}",
            "scenario.load=server",
            "scenario.server.arrivals=constant",
            f"scenario.server.rate={opts.rate}",
            f"scenario.requests={opts.requests}",
            f"scenario.max_seconds={opts.requests / opts.rate + 60:g}",
            f"scenario.workload.prompt_tokens={opts.prompt_tokens}",
            f"scenario.workload.output_tokens={opts.output_tokens}",
            "scenario.warmup_requests=2",
            "scenario.accuracy.enabled=false",
        ],
        results,
    )
    (step,) = record["metrics"]["serving"]["steps"]
    return step


def server_timings(step: dict[str, Any]) -> dict[str, float]:
    """Medians of llama.cpp's own per-request timings (prompt processing, ms per generated token)."""
    timings = [s["timings"] for s in step["per_request"].get("server") or [] if s and "timings" in s]
    if not timings:
        raise SystemExit("the server returned no timings (not llama.cpp's llama-server?)")
    return {"prompt_ms": statistics.median(t["prompt_ms"] for t in timings), "per_token_ms": statistics.median(t["predicted_per_token_ms"] for t in timings)}


def guidellm_run(exe: str, url: str, opts: argparse.Namespace, folder: Path, out: Path) -> dict[str, float]:
    """One guidellm constant-rate benchmark on the same server and workload; its medians."""
    target = url[: -len("/v1")] if url.endswith("/v1") else url
    report_path = out / "guidellm.json"
    out.mkdir(parents=True, exist_ok=True)
    command = [
        exe,
        "run",
        "--backend",
        f"kind=openai_http,target={target},request_format=/v1/completions",
        "--profile",
        f"kind=constant,rate={opts.rate}",
        "--constraint",
        f"kind=max_requests,count={opts.requests}",
        "--tokenizer",
        f"kind=huggingface_auto,model={folder}",
        "--data",
        f"kind=synthetic_text,prompt_tokens={opts.prompt_tokens},output_tokens={opts.output_tokens}",
        "--output",
        f"kind=json,path={report_path}",
        "--disable-console-interactive",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not report_path.is_file():
        raise RuntimeError(" ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:500])
    report = json.loads(report_path.read_text())
    metrics = report["benchmarks"][0]["metrics"]

    def p50(name: str) -> float:
        return float(metrics[name]["successful"]["median"])

    return {"ttft_ms": p50("time_to_first_token_ms"), "itl_ms": p50("inter_token_latency_ms")}


def inprocess_decode(args: argparse.Namespace, results: Path) -> dict[str, Any]:
    """One ``+scenario=llm_fp32 backend=llamacpp`` run shaped like llama-bench's tg (short prompt)."""
    return harness_record(
        [
            "+scenario=llm_fp32",
            "backend=llamacpp",
            f"model={args.model}",
            f"backend.threads={args.threads}",
            f"backend.flash_attn={str(args.flash_attn).lower()}",
            "scenario.prompt_len=8",
            f"scenario.new_tokens={args.tg_tokens}",
            "scenario.min_iters=5",
            "scenario.min_duration_s=0",
            "scenario.warmup_iters=1",
            "scenario.accuracy.enabled=false",
        ],
        results,
    )


def llama_bench_tg(gguf: str, threads: int, tokens: int, flash_attn: bool) -> float:
    from harness.serving.gguf import tool

    bench = tool("llama-bench")
    if bench is None:
        raise SystemExit("llama-bench is not built (scripts/llm-server/build-llamacpp.sh)")
    done = subprocess.run(
        [str(bench), "-m", gguf, "-p", "0", "-n", str(tokens), "-t", str(threads), "-r", "5", "-fa", "on" if flash_attn else "off", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = json.loads(done.stdout)
    return float(row["avg_ts"])


def serving_table(args: argparse.Namespace, tmp_path: Path, results: Path) -> None:
    """The llama-server table: the harness beside guidellm and the server's own timings."""
    run_dir = tmp_path / "run"
    url = args.url or start_server(args.model, args.precision, args.parallel, args.threads, run_dir)
    try:
        step = harness_serving(url, args, results)
        server = server_timings(step)
        guide: Optional[dict[str, float]] = None
        guide_note = "not run (--guidellm PATH)"
        if args.guidellm:
            from harness.serving.gguf import _model_folder

            try:
                guide = guidellm_run(args.guidellm, url, args, _model_folder(args.model, None, lambda _: None), tmp_path / "guidellm")
                guide_note = "ran"
            except RuntimeError as exc:
                guide_note = f"failed: {exc}"
    finally:
        if not args.url:
            stop_server(run_dir)

    ttft, tpot, itl = step["ttft_ms"]["p50"], step["tpot_ms"]["p50"], step["itl_ms"]["p50"]
    print(
        f"\n## llama-server ({args.model} {args.precision}, {args.parallel} slots), {args.rate:g} req/s constant, "
        f"{args.requests} requests of {args.prompt_tokens} + {args.output_tokens} tokens\n"
    )
    print("| figure | harness p50 ms | reference | reference p50 ms | ratio |")
    print("|---|---|---|---|---|")
    if guide is not None:
        print(f"| TTFT | {ttft:.2f} | guidellm time_to_first_token | {guide['ttft_ms']:.2f} | {ratio(ttft, guide['ttft_ms'])} |")
        print(f"| TPOT | {tpot:.2f} | guidellm inter_token_latency | {guide['itl_ms']:.2f} | {ratio(tpot, guide['itl_ms'])} |")
    print(f"| TTFT | {ttft:.2f} | server timings prompt_ms | {server['prompt_ms']:.2f} | {ratio(ttft, server['prompt_ms'])} |")
    print(f"| TPOT | {tpot:.2f} | server timings predicted_per_token_ms | {server['per_token_ms']:.2f} | {ratio(tpot, server['per_token_ms'])} |")
    print(f"\nharness ITL p50 (chunk-to-chunk gaps, vLLM's ITL): {itl:.2f} ms")
    print(f"\nguidellm: {guide_note}")


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.3f}" if a and b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_small")
    parser.add_argument("--precision", default="fp16", help="GGUF the server runs (fp16, int8, int4, fp32)")
    parser.add_argument("--rate", type=float, default=0.5, help="requests/s, constant arrivals")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    parser.add_argument("--url", help="an already running llama-server's /v1 URL (else one is started here)")
    parser.add_argument("--guidellm", help="path of a guidellm executable (its own venv)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="server, in-process and llama-bench threads")
    parser.add_argument("--tg-tokens", type=int, default=128)
    parser.add_argument("--flash-attn", action="store_true", help="flash attention on in both (default off, like llama-cpp-python)")
    parser.add_argument("--skip-server", action="store_true", help="only the in-process vs llama-bench comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        results = tmp_path / "results"
        results.mkdir()
        if not args.skip_server:
            serving_table(args, tmp_path, results)

        record = inprocess_decode(args, results)
        gguf = record["metrics"]["gguf"]["path"]
        # harness, llama-bench, harness, llama-bench: a shared machine's load drifts
        before = llama_bench_tg(gguf, args.threads, args.tg_tokens, args.flash_attn)
        again = inprocess_decode(args, results)
        after = llama_bench_tg(gguf, args.threads, args.tg_tokens, args.flash_attn)
        ours = (record["metrics"]["generation"]["decode_tokens_per_s"] + again["metrics"]["generation"]["decode_tokens_per_s"]) / 2
        bench = (before + after) / 2
        # llama.cpp's own counters over the same measured calls (llama_perf_context): same run, same load
        own = [r["metrics"]["backend"].get("llama_perf", {}).get("eval_tokens_per_s") for r in (record, again)]
        print(f"\n## in-process llama.cpp decode ({args.model}, GGUF {record['metrics']['gguf']['gguf_type']}, {args.threads} threads)\n")
        print("| harness decode tokens/s (mean of 2 runs) | llama-bench tg tokens/s (before, after) | ratio (target >= 0.98) |")
        print("|---|---|---|")
        print(f"| {ours:.1f} | {bench:.1f} ({before:.1f}, {after:.1f}) | {ratio(ours, bench)} |")
        if all(own):
            mine = [r["metrics"]["generation"]["decode_tokens_per_s"] for r in (record, again)]
            print("\n| run | harness decode tokens/s | llama.cpp's own eval tokens/s (same calls) | ratio |")
            print("|---|---|---|---|")
            for k, (a, b) in enumerate(zip(mine, own), 1):
                print(f"| {k} | {a:.1f} | {b:.1f} | {ratio(a, b)} |")


if __name__ == "__main__":
    main()
