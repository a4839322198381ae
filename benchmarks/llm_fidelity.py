"""Fidelity of the harness's generation figures against each backend's own measurement.

Run: ``.venv/bin/python benchmarks/llm_fidelity.py [--model llama_small] [--rounds 3]
[--backends pytorch,onnxruntime,openvino] [--int4 [--int4-model llama_1b]]``.

For every backend, in alternating rounds in one run (harness, bare, harness, bare ...,
because a shared machine's load drifts), the same model, prompts and shapes:

- the harness: ``+scenario=llm_fp32 backend=<name>`` through the real CLI (accuracy off);
- the bare reference, written here without any harness code on the timed path:
  - ``pytorch``: a plain transformers loop (forward with a ``DynamicCache``,
    ``logits_to_keep=1``, arg-max, ``.item()``);
  - ``onnxruntime``: a plain ``InferenceSession`` loop on the harness's exported graph,
    presents bound as the next step's pasts with IOBinding;
  - ``openvino``: openvino-genai's ``LLMPipeline.generate`` on the harness's model folder
    without a streamer, timed by its own ``PerfMetrics`` (TTFT, TPOT); also the PerfMetrics
    the harness's run read back over its own measured calls.

Figures: decode tokens/s (tokens after the first / time from first to last token, summed
over requests) and TTFT p50. Ratios harness / bare: targets >= 0.98 for tokens/s and
0.95-1.05 for TTFT.

``--int4`` adds weight-only int4 vs fp32 decode tokens/s on OpenVINO of ``--int4-model``
(default ``llama_1b``, random weights: training a 1.24B model is not quick on a CPU), with the
perplexity ratio of each to eager fp32. ``llama_1b`` exports a 5 GB ONNX and converts it: it
needs about 20 GB of free memory and a long while on a small CPU; ``--int4-model llama_small``
is the quick stand-in (its int4/fp32 ratio understates a 1B model's: less of its time is
reading weights).

Speed is never asserted in tests; these figures belong in the README with the load of the
machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_fidelity import harness_record as cli_record  # noqa: E402 - a sibling script

REPO = Path(__file__).resolve().parents[1]


def harness_record(args: list[str], results: Path) -> dict[str, Any]:
    """The real ``harness`` CLI's one record (``serving_fidelity.harness_record``), which must be ok."""
    record = cli_record(args, results)
    if record["status"] != "ok":
        raise SystemExit(f"harness {record['status']}: {record['reason']}")
    return record


def shape_overrides(opts: argparse.Namespace) -> list[str]:
    return [
        f"model={opts.model}",
        f"scenario.prompt_len={opts.prompt_len}",
        f"scenario.new_tokens={opts.new_tokens}",
        f"scenario.prompts={opts.prompts}",
        f"scenario.min_iters={opts.calls}",
        "scenario.min_duration_s=0",
        "scenario.warmup_iters=1",
        "scenario.accuracy.enabled=false",
    ]


def harness_generation(backend: str, opts: argparse.Namespace, results: Path) -> dict[str, Any]:
    return harness_record(["+scenario=llm_fp32", f"backend={backend}", *shape_overrides(opts)], results)


def corpus_prompts(opts: argparse.Namespace) -> list[list[int]]:
    """The prompts the harness draws: the first eval windows of ``prompt_len`` tokens of the
    dataset the LLM scenarios use (``conf/dataset/corpus.yaml``), by the harness's own functions."""
    import yaml

    from harness.data import DatasetOptions
    from harness.generation import corpus
    from harness.generation.tokenizer import corpus_tokenizer

    text = corpus.load_corpus(DatasetOptions(**yaml.safe_load((REPO / "conf" / "dataset" / "corpus.yaml").read_text())))
    stream = corpus.token_stream(corpus_tokenizer(), text.eval)
    return corpus.windows(stream, opts.prompt_len, opts.prompts).tolist()


Call = Callable[[list[int]], Any]  # one prompt -> a GenerationOutput (tokens, their host times, start)


def figures(outputs: Sequence[Any]) -> dict[str, float]:
    """TTFT p50 (ms) and decode tokens/s of one-request calls, by the harness's own formulas
    (:func:`harness.generation.timing.generation_metrics`), so both sides are computed alike."""
    from harness.generation.timing import generation_metrics

    gen = generation_metrics([[output] for output in outputs], keep_samples=False)
    return {"ttft_p50_ms": gen["ttft_ms"]["p50"], "decode_tokens_per_s": gen["decode_tokens_per_s"]}


def timed_calls(call: Call, prompts: list[list[int]], calls: int) -> dict[str, float]:
    """One warm-up call, then ``calls`` calls cycling through ``prompts``."""
    call(prompts[0])
    return figures([call(prompts[index % len(prompts)]) for index in range(calls)])


def output(prompt: list[int], tokens: list[int], stamps: list[float], start: float) -> Any:
    from harness.generation.session import GenerationOutput

    return GenerationOutput(tokens, stamps, start, len(prompt))


# --- bare references: no harness code on the timed path --------------------------------------


def bare_transformers(opts: argparse.Namespace, prompts: list[list[int]]) -> Callable[[], dict[str, float]]:
    import torch
    import yaml
    from transformers import DynamicCache

    from harness.models import ModelOptions, load_model

    spec = yaml.safe_load((REPO / "conf" / "model" / f"{opts.model}.yaml").read_text())
    model = load_model(ModelOptions(name=spec["name"], family=spec["family"], config=spec["config"])).module

    def call(prompt: list[int]) -> Any:
        stamps, tokens = [], []
        with torch.inference_mode():
            start = time.perf_counter()
            cache = DynamicCache(config=model.config)
            out = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1)
            tokens.append(token.item())
            stamps.append(time.perf_counter())
            for _ in range(opts.new_tokens - 1):
                out = model(input_ids=token[:, None], cache=cache, use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1)
                tokens.append(token.item())
                stamps.append(time.perf_counter())
        return output(prompt, tokens, stamps, start)

    return lambda: timed_calls(call, prompts, opts.calls)


def bare_onnxruntime(graph: str, config: dict[str, Any], prompts: list[list[int]], opts: argparse.Namespace) -> Callable[[], dict[str, float]]:
    import onnxruntime as ort

    from harness.generation.decoders import kv_layout
    from harness.generation.onnx_export import empty_past, io_names

    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    layout = kv_layout(config)
    inputs, outputs = io_names(layout.layers)  # the exported graph's names (input_ids, attention_mask, position_ids, pasts)
    pasts, presents = inputs[3:], outputs[1:]

    def step(ids: np.ndarray, length: int, cache: list[Any]) -> tuple[np.ndarray, list[Any]]:
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", np.ones((1, length), dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.arange(length - ids.shape[1], length, dtype=np.int64)[None])
        for name, value in zip(pasts, cache):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in presents:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return values[0].numpy()[0, -1], values[1:]

    def call(prompt: list[int]) -> Any:
        empty = [ort.OrtValue.ortvalue_from_numpy(past) for past in empty_past(layout, 1)]
        stamps, tokens = [], []
        start = time.perf_counter()
        logits, cache = step(np.asarray([prompt], dtype=np.int64), len(prompt), empty)
        tokens.append(int(logits.argmax()))
        stamps.append(time.perf_counter())
        for i in range(opts.new_tokens - 1):
            logits, cache = step(np.asarray([[tokens[-1]]], dtype=np.int64), len(prompt) + i + 1, cache)
            tokens.append(int(logits.argmax()))
            stamps.append(time.perf_counter())
        return output(prompt, tokens, stamps, start)

    return lambda: timed_calls(call, prompts, opts.calls)


def bare_genai(folder: str, properties: dict[str, Any], prompts: list[list[int]], opts: argparse.Namespace) -> Callable[[], dict[str, float]]:
    """openvino-genai's LLMPipeline, no streamer; its own PerfMetrics time every call."""
    import openvino as ov
    import openvino_genai as genai

    pipe = genai.LLMPipeline(folder, "CPU", **properties)
    config = genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = opts.new_tokens
    config.ignore_eos = True
    config.do_sample = False

    def one(prompt: list[int]) -> tuple[float, float]:
        ids = np.asarray([prompt], dtype=np.int64)
        result = pipe.generate(genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config)
        metrics = result.perf_metrics
        return metrics.get_ttft().mean, metrics.get_tpot().mean

    def run() -> dict[str, float]:
        one(prompts[0])
        measured = [one(prompts[i % len(prompts)]) for i in range(opts.calls)]
        return {"ttft_p50_ms": statistics.median(t for t, _ in measured), "decode_tokens_per_s": 1000.0 / statistics.mean(tpot for _, tpot in measured)}

    return run


# --- the tables ----------------------------------------------------------------------------------


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.3f}" if a and b else "n/a"


def harness_figures(record: dict[str, Any]) -> dict[str, float]:
    gen = record["metrics"]["generation"]
    return {"ttft_p50_ms": gen["ttft_ms"]["p50"], "decode_tokens_per_s": gen["decode_tokens_per_s"]}


def fidelity(backend: str, opts: argparse.Namespace, results: Path, prompts: list[list[int]]) -> list[str]:
    """Alternating rounds of the harness and the bare reference; the Markdown rows."""
    rounds: list[tuple[dict[str, float], dict[str, float]]] = []
    in_run: list[dict[str, float]] = []
    bare: Optional[Callable[[], dict[str, float]]] = None
    for _ in range(opts.rounds):
        record = harness_generation(backend, opts, results)
        if bare is None:  # built once from the first run's artifacts, outside any timed region
            if backend == "pytorch":
                bare = bare_transformers(opts, prompts)
            elif backend == "onnxruntime":
                bare = bare_onnxruntime(record["metrics"]["backend"]["graph"], model_config(opts), prompts, opts)
            else:
                facts = record["metrics"]["backend"]
                properties = {
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": facts["inference_precision"],
                    "KV_CACHE_PRECISION": facts["kv_cache_precision"],
                }
                bare = bare_genai(facts["model_folder"], properties, prompts, opts)
        own = record["metrics"]["backend"].get("genai_perf_metrics")
        if own:
            in_run.append(
                {
                    "ttft_ms": own["ttft_ms_mean"],
                    "tpot_ms": own["tpot_ms_mean"],
                    "harness_ttft_ms": record["metrics"]["generation"]["ttft_ms"]["mean"],
                    "harness_tpot_ms": record["metrics"]["generation"]["tpot_ms"]["mean"],
                }
            )
        rounds.append((harness_figures(record), bare()))
    rows = []
    for index, (ours, theirs) in enumerate(rounds, 1):
        rows.append(
            f"| {backend} | {index} | {ours['decode_tokens_per_s']:.1f} | {theirs['decode_tokens_per_s']:.1f} | "
            f"{ratio(ours['decode_tokens_per_s'], theirs['decode_tokens_per_s'])} | {ours['ttft_p50_ms']:.1f} | "
            f"{theirs['ttft_p50_ms']:.1f} | {ratio(ours['ttft_p50_ms'], theirs['ttft_p50_ms'])} |"
        )
    mean = {side: {k: statistics.mean(r[i][k] for r in rounds) for k in rounds[0][0]} for i, side in enumerate(("ours", "theirs"))}
    rows.append(
        f"| {backend} | mean | {mean['ours']['decode_tokens_per_s']:.1f} | {mean['theirs']['decode_tokens_per_s']:.1f} | "
        f"**{ratio(mean['ours']['decode_tokens_per_s'], mean['theirs']['decode_tokens_per_s'])}** | "
        f"{mean['ours']['ttft_p50_ms']:.1f} | {mean['theirs']['ttft_p50_ms']:.1f} | "
        f"**{ratio(mean['ours']['ttft_p50_ms'], mean['theirs']['ttft_p50_ms'])}** |"
    )
    for index, own in enumerate(in_run, 1):
        rows.append(
            f"| {backend} (genai PerfMetrics of the harness's own calls) | {index} | "
            f"{1000 / own['harness_tpot_ms']:.1f} (1/TPOT) | {1000 / own['tpot_ms']:.1f} (1/TPOT) | "
            f"{ratio(own['tpot_ms'], own['harness_tpot_ms'])} | {own['harness_ttft_ms']:.1f} (mean) | "
            f"{own['ttft_ms']:.1f} (mean) | {ratio(own['harness_ttft_ms'], own['ttft_ms'])} |"
        )
    return rows


def model_config(opts: argparse.Namespace) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "conf" / "model" / f"{opts.model}.yaml").read_text())["config"]


def weight_only_int4(results: Path, opts: argparse.Namespace) -> list[str]:
    """``--int4-model`` (random weights) fp32 and weight-only int4 on OpenVINO: decode tokens/s and perplexity ratio."""
    shape = [
        f"model={opts.int4_model}",
        "model.checkpoint=null",
        "scenario.prompt_len=32",
        "scenario.new_tokens=32",
        "scenario.prompts=2",
        "scenario.min_iters=3",
        "scenario.min_duration_s=0",
        "scenario.warmup_iters=1",
        "scenario.accuracy.limit=2",
        "scenario.accuracy.window=64",
        "launcher.timeout_s=7200",
    ]
    rows = []
    for scenario in ("llm_fp32", "llm_int4"):
        record = harness_record([f"+scenario={scenario}", "backend=openvino", *shape], results)
        gen, acc = record["metrics"]["generation"], record["metrics"]["accuracy"]
        size = (record["metrics"].get("compression") or {}).get("size_bytes") or record["metrics"]["openvino_ir"]["size_bytes"]
        rows.append(
            (
                scenario,
                gen["decode_tokens_per_s"],
                gen["ttft_ms"]["p50"],
                acc["value"],
                acc["reference"],
                acc["relative"],
                acc.get("agreement"),
                size,
                record["metrics"]["memory_mib"].get("peak_rss_mib"),
            )
        )
    out = [
        "| scenario | decode tokens/s | TTFT p50 ms | perplexity | eager fp32 perplexity | relative | agreement | IR size | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, tps, ttft, value, reference, relative, agreement, size, rss in rows:
        out.append(
            f"| {name} | {tps:.2f} | {ttft:.0f} | {value:.1f} | {reference:.1f} | {relative:.4f} | "
            f"{agreement if agreement is None else f'{agreement:.3f}'} | {size / 2**30:.2f} GiB | {rss:.0f} |"
        )
    out.append(f"\nint4 / fp32 decode tokens/s: {ratio(rows[1][1], rows[0][1])}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama_small")
    parser.add_argument("--backends", default="pytorch,onnxruntime,openvino")
    parser.add_argument("--rounds", type=int, default=3, help="alternating harness / bare rounds per backend")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5, help="measured calls per round (one prompt each)")
    parser.add_argument("--int4", action="store_true", help="also weight-only int4 vs fp32 on OpenVINO")
    parser.add_argument("--int4-model", default="llama_1b", help="the --int4 model (llama_1b needs ~20 GB free)")
    parser.add_argument("--skip-fidelity", action="store_true", help="only the --int4 table")
    opts = parser.parse_args()

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        if not opts.skip_fidelity:
            prompts = corpus_prompts(opts)
            print(
                f"\n## {opts.model}, batch 1, prompt {opts.prompt_len}, {opts.new_tokens} new tokens, "
                f"{opts.calls} calls per round, {opts.rounds} alternating rounds\n"
            )
            print(
                "| backend | round | harness decode tok/s | bare decode tok/s | ratio (>= 0.98) | harness TTFT p50 ms | bare TTFT p50 ms | ratio (0.95-1.05) |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for backend in opts.backends.split(","):
                for row in fidelity(backend, opts, results, prompts):
                    print(row, flush=True)
        if opts.int4:
            print(f"\n## {opts.int4_model} (random weights) on OpenVINO: weight-only int4 vs fp32, prompt 32, 32 new tokens\n")
            for row in weight_only_int4(results, opts):
                print(row, flush=True)
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
