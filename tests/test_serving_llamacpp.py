"""llama.cpp for real: GGUF conversion, the in-process backend, and llama-server through backend=openai.

Everything here needs llama-cpp-python and the tools ``scripts/llm-server/build-llamacpp.sh``
builds (``make venv`` does both). Missing pieces skip with the precise reason; CI sets
``HARNESS_REQUIRE_LLAMACPP=1`` so that a missing piece fails instead of skipping.
The llama-server tests use the server CI starts (``HARNESS_LLAMACPP_URL``); the
kill-mid-run test starts a private one with the start script. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import records_in, run_cli

pytestmark = pytest.mark.llamacpp

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "llm-server"
TINY = ["model=llama_tiny", "launcher.host_lock=false"]
SERVE = [
    *TINY,
    "+scenario=llm_serve",
    "scenario.workload.prompt_tokens=16",
    "scenario.workload.output_tokens=8",
    "scenario.warmup_requests=1",
    "scenario.accuracy.texts=2",
    "scenario.accuracy.window=32",
]


def _missing(what: str) -> None:
    if os.environ.get("HARNESS_REQUIRE_LLAMACPP") == "1":
        pytest.fail(f"{what} (HARNESS_REQUIRE_LLAMACPP=1: CI must run the llama.cpp tests)")
    pytest.skip(what)


def need_llamacpp(tools: tuple[str, ...] = (), bindings: bool = True) -> None:
    if bindings:
        try:
            import llama_cpp  # noqa: F401
        except (ImportError, OSError) as exc:
            _missing(f"llama-cpp-python is not importable ({type(exc).__name__}: {exc}); make venv builds it")
    from harness.errors import HarnessError
    from harness.serving import gguf

    try:
        gguf.converter_dir()
    except HarnessError as exc:
        _missing(exc.one_line())
    for name in tools:
        if gguf.tool(name) is None:
            _missing(f"{name} is not built under {gguf.llamacpp_home()}; run scripts/llm-server/build-llamacpp.sh")


@pytest.fixture(scope="module")
def tiny_source():
    need_llamacpp()
    from harness.config import typed
    from harness.generation.session import DecoderSource
    from harness.generation.tokenizer import corpus_tokenizer
    from harness.models import ModelOptions, load_model
    from omegaconf import OmegaConf

    options = typed(ModelOptions, OmegaConf.load(REPO / "conf" / "model" / "llama_tiny.yaml"), "model")
    model = load_model(options)
    return DecoderSource(
        model.name, model.module, model.config, model.tokenizer or corpus_tokenizer(None), model.params, model.weights_digest(), None, lambda _: None
    )


@pytest.mark.parametrize("precision, kind", [("fp32", "f32"), ("fp16", "f16"), ("int8", "q8_0"), ("int4", "q4_K_M")])
def test_gguf_conversion_is_cached_by_content(tiny_source, precision, kind):
    import gguf as gguf_package

    from harness.serving.gguf import gguf_for

    folder = tiny_source.folder()
    path, stage = gguf_for(folder, precision, status=lambda _: None)
    again, second = gguf_for(folder, precision, status=lambda _: None)
    assert again == path and second["cached"] and stage["gguf_type"] == kind
    reader = gguf_package.GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"
    assert len(reader.tensors) == 2 * 9 + 2  # per layer: 4 attention + 3 MLP + 2 norms; embeddings + final norm


def test_in_process_generation_follows_the_contract_and_matches_eager(tiny_source):
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppOptions
    from harness.generation import quality
    from harness.generation.session import GenerationPlan, check_outputs

    backend = LlamaCppBackend(LlamaCppOptions(threads=2))
    session = backend.prepare_generation(tiny_source, GenerationPlan("fp32", 2, 12, 6))
    try:
        prompts = np.random.default_rng(0).integers(5, 700, size=(2, 12))
        outputs = session.generate(prompts.tolist(), 6)
        check_outputs(outputs, 2, "llamacpp")  # one output per prompt, timestamps after the start, in order
        assert [len(o.tokens) for o in outputs] == [6, 6]
        assert outputs[1].token_times[0] >= outputs[0].token_times[-1]  # the second prompt runs after the first
        eager = quality.eager_greedy(tiny_source.module, prompts, 6)
        assert outputs[0].tokens[0] == int(eager[0, 0]) and outputs[1].tokens[0] == int(eager[1, 0])
        got = session.score(prompts)
        want = quality.eager_logprobs(tiny_source.module, prompts)
        assert got.shape == want.shape == (2, 11)
        assert np.max(np.abs(got - want)) < 1e-2  # fp32 GGUF: the same model, another runtime
        assert "llama.cpp" in session.metrics()["engine"]
    finally:
        session.close()


def test_llm_fp32_runs_on_llamacpp(tmp_path):
    need_llamacpp()
    done = run_cli(
        "+scenario=llm_fp32",
        "backend=llamacpp",
        *TINY,
        "scenario.prompt_len=16",
        "scenario.new_tokens=8",
        "scenario.min_iters=3",
        "scenario.min_duration_s=0",
        "scenario.warmup_iters=1",
        "scenario.accuracy.limit=2",
        "scenario.accuracy.window=32",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = records_in(tmp_path)
    assert record["status"] == "ok" and record["backend"]["name"] == "llamacpp"
    gen = record["metrics"]["generation"]
    assert gen["ttft_ms"]["p50"] > 0 and gen["output_tokens_per_s"] > 0
    assert record["metrics"]["accuracy"]["relative"] == pytest.approx(1.0, abs=0.01)
    assert record["metrics"]["gguf"]["gguf_type"] == "f32"


def test_llm_serve_in_process_llamacpp(tmp_path):
    need_llamacpp()
    done = run_cli(
        *SERVE,
        "backend=llamacpp",
        "scenario.precision=int8",
        "scenario.load=concurrency",
        "scenario.concurrency=2",
        "scenario.requests=4",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = records_in(tmp_path)
    assert record["status"] == "ok" and record["scenario"]["precision"] == "int8"
    (step,) = record["metrics"]["serving"]["steps"]
    assert step["requests"]["finished"] == 4 and all(n == 8 for n in step["per_request"]["output_tokens"])
    assert all(n == 16 for n in step["per_request"]["prompt_tokens"])  # cut with the GGUF's own vocabulary
    assert record["metrics"]["backend"]["batching"].startswith("none: one request at a time")
    assert record["metrics"]["accuracy"]["metric"] == "perplexity" and record["metrics"]["accuracy"]["value"] > 1


@pytest.fixture(scope="module")
def server_url():
    url = os.environ.get("HARNESS_LLAMACPP_URL")
    if not url:
        _missing('no llama.cpp server: eval "$(scripts/llm-server/start-llamacpp.sh --model llama_tiny)" exports HARNESS_LLAMACPP_URL (.ci/run does)')
    return url


def test_llm_serve_against_llama_server(tmp_path, server_url):
    done = run_cli(
        *SERVE,
        "backend=openai",
        f"backend.base_url={server_url}",
        "scenario.load=sweep",
        "scenario.sweep.steps=3",
        "scenario.sweep.max_concurrency=4",
        "scenario.requests=6",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = records_in(tmp_path)
    assert record["status"] == "ok"
    steps = record["metrics"]["serving"]["steps"]
    assert [s["name"] for s in steps[:2]] == ["synchronous", "throughput"] and len(steps) == 3
    for step in steps:
        assert step["requests"]["finished"] == 6 and step["verdict"] in ("VALID", "INVALID")
        assert all(n == 8 for n in step["per_request"]["output_tokens"])  # ignore_eos honoured
    # llama.cpp returns no prompt log-probabilities: accuracy is null, with the reason
    assert record["metrics"]["accuracy"] is None
    assert "no prompt log-probabilities" in record["metrics"]["serving"]["accuracy_reason"]


def test_llama_server_killed_mid_run(tmp_path):
    need_llamacpp(("llama-server",), bindings=False)  # the GGUF is converted without the bindings
    env = {**os.environ, "HARNESS_LLAMACPP_RUN": str(tmp_path / "run"), "PY": str(Path(os.sys.executable))}
    started = subprocess.run(
        [str(SCRIPTS / "start-llamacpp.sh"), "--model", "llama_tiny", "--parallel", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert started.returncode == 0, started.stderr[-2000:]
    url = started.stdout.strip().split("=", 1)[1]
    pid = int((tmp_path / "run" / "pid").read_text())
    log = tmp_path / "run" / "server.log"
    results = tmp_path / "results"
    try:
        harness = subprocess.Popen(
            [
                str(Path(os.sys.executable).parent / "harness"),
                *SERVE,
                "backend=openai",
                f"backend.base_url={url}",
                "scenario.load=concurrency",
                "scenario.concurrency=1",
                "scenario.requests=400",
                "scenario.workload.output_tokens=16",
                "backend.retries=1",
                "scenario.accuracy.enabled=false",
                f"results_dir={results}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 600
        while log.read_text(errors="replace").count("stop processing") < 4:  # a released slot per finished request
            assert harness.poll() is None, harness.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the harness never got 4 requests through"
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        _, stderr = harness.communicate(timeout=600)
    finally:
        subprocess.run([str(SCRIPTS / "stop-llamacpp.sh")], env=env, timeout=60)
    assert harness.returncode == 1, stderr[-2000:]
    (record,) = records_in(results)
    assert record["status"] == "failed" and "the server went away" in record["reason"]
    (step,) = record["metrics"]["serving"]["steps"]
    assert step["requests"]["finished"] >= 3, step.get("errors")
    assert step["per_request"]["outcome"][: step["requests"]["finished"]] == ["ok"] * step["requests"]["finished"], step.get("errors")
    json.dumps(record)  # the partial record is plain JSON
