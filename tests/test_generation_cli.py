"""``harness +scenario=llm_fp32`` through the real CLI, as a user runs it, on llama_tiny."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow

QUICK = [
    "model=llama_tiny",
    "scenario.prompt_len=16",
    "scenario.new_tokens=8",
    "scenario.prompts=2",
    "scenario.warmup_iters=1",
    "scenario.min_iters=3",
    "scenario.min_duration_s=0",
    "scenario.accuracy.limit=2",
    "scenario.accuracy.window=32",
    "launcher.host_lock=false",
]
SUMMARIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def check_generation_record(rec: dict, backend: str, batch: int) -> None:
    records.validate(rec)
    assert rec["status"] == "ok", rec["reason"]
    assert rec["scenario"] == {"name": "llm_fp32", "kind": "generation", "precision": "fp32", "batch_size": batch, "seq_len": 16}
    gen = rec["metrics"]["generation"]
    for key in SUMMARIES:
        s = gen[key]
        assert 0 <= s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"] and s["mean"] > 0, key
        assert all(s[f"p{p}_ci"]["low"] <= s[f"p{p}_ci"]["high"] for p in (50, 90, 99))
    assert gen["calls"] >= 3 and gen["requests"] == gen["calls"] * batch
    assert gen["ttft_ms"]["count"] == gen["requests"] and gen["itl_ms"]["count"] == gen["requests"] * 7
    assert gen["output_tokens"] == gen["requests"] * 8 and gen["prompt_tokens"] == gen["requests"] * 16
    for rate in ("prefill_tokens_per_s", "decode_tokens_per_s", "output_tokens_per_s"):
        assert gen[rate] > 0
    # llama_tiny: 2 layers x 2 kv heads x 16 dims, fp32, (16 + 8) tokens per request
    assert gen["kv_cache_bytes"] == 2 * 2 * batch * 2 * 24 * 16 * 4
    throughput = rec["metrics"]["throughput"]
    assert throughput["tokens_per_s"] == gen["output_tokens_per_s"] and throughput["samples_per_s"] == gen["requests_per_s"]
    acc = rec["metrics"]["accuracy"]
    assert acc["metric"] == "perplexity" and acc["relative"] == pytest.approx(1.0, abs=1e-3)
    assert acc["agreement"] == 1.0 and acc["windows"] == 2
    assert rec["metrics"]["memory_mib"]["peak_rss_mib"] > 0
    assert rec["metrics"]["backend"]["engine"] and rec["backend"]["name"] == backend


@pytest.mark.parametrize(
    "backend, extra",
    [
        ("pytorch", []),
        ("onnxruntime", []),
        pytest.param("openvino", [], marks=pytest.mark.openvino),
        pytest.param("openvino", ["scenario.batch_size=2"], marks=pytest.mark.openvino, id="openvino-stateful-batch2"),
    ],
)
def test_llm_fp32_card_syntax_writes_an_ok_record(backend, extra, tmp_path) -> None:
    if backend == "openvino" and not extra and importlib.util.find_spec("openvino_genai") is None:
        pytest.skip("openvino-genai is not installed (the harness[llm] extra)")
    proc = run_cli("+scenario=llm_fp32", f"backend={backend}", *QUICK, *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    check_generation_record(rec, backend, 2 if extra else 1)
    if backend == "onnxruntime":
        assert rec["metrics"]["export"]["max_abs_diff"] <= 1e-3
    if backend == "openvino":
        engine = rec["metrics"]["backend"]["engine"]
        assert ("stateful InferRequest" in engine) if extra else ("LLMPipeline" in engine)
        if not extra:
            assert rec["metrics"]["backend"]["genai_perf_metrics"]["calls"] == rec["metrics"]["generation"]["calls"]


@pytest.mark.parametrize(
    "backend, code, status, needle",
    [
        ("tensorrt", 3, "unavailable", "backend 'tensorrt' is unavailable"),
        ("onnxref", 4, "unsupported", "backend 'onnxref' does not run text generation"),
    ],
)
def test_backends_without_generation_answer_in_one_line(backend, code, status, needle, tmp_path) -> None:
    if backend == "onnxref" and importlib.util.find_spec("harness_plugin_example") is None:
        pytest.skip("the example plugin is not installed (make venv installs it)")
    if backend == "tensorrt" and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    proc = run_cli("+scenario=llm_fp32", f"backend={backend}", *QUICK, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in proc.stderr
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == status and needle in rec["reason"]


@pytest.mark.parametrize(
    "args, needle",
    [
        # the family table's tasks, checked before the run (preflight)
        (["model=bert_tiny"], "model.family=bert does text-classification but dataset 'corpus' is causal-lm"),
        (["dataset=sentiment"], "model.family=llama does causal-lm but dataset 'sentiment' is text-classification"),
        (["scenario.prompt_len=1020", "scenario.seq_len=1020"], "attends to 1024 positions"),
    ],
)
def test_wrong_model_or_data_is_one_line(args, needle, tmp_path) -> None:
    proc = run_cli("+scenario=llm_fp32", "backend=pytorch", *QUICK, *args, cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0] and "(fix: " in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
