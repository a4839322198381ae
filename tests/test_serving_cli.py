"""``+scenario=llm_serve backend=openai`` through the real CLI against the fake server (127.0.0.1)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import records_in, run_cli

pytest.importorskip("httpx", reason="httpx is not installed (pip install 'harness[serving]')")

SERVER = Path(__file__).with_name("fake_openai_server.py")
QUICK = [
    "+scenario=llm_serve",
    "backend=openai",
    "scenario.requests=6",
    "scenario.warmup_requests=1",
    "scenario.workload.prompt_tokens=8",
    "scenario.workload.output_tokens=4",
    "scenario.accuracy.texts=2",
    "launcher.host_lock=false",
]


@pytest.fixture
def start_server(tmp_path):
    started = []

    def start(*args: str) -> str:
        port_file = tmp_path / f"port{len(started)}"
        proc = subprocess.Popen([sys.executable, str(SERVER), "--port-file", str(port_file), "--max-lifetime-s", "300", *args])
        started.append(proc)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the fake server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port_file.read_text()}/v1"

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def test_server_load_writes_an_ok_record(tmp_path, start_server):
    url = start_server("--slots", "2")
    done = run_cli(*QUICK, f"backend.base_url={url}", "scenario.server.rate=20", f"results_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = records_in(tmp_path)
    assert record["status"] == "ok"
    assert record["scenario"]["kind"] == "serving" and record["scenario"]["precision"] == "server"
    serving = record["metrics"]["serving"]
    (only,) = serving["steps"]
    assert only["kind"] == "poisson" and only["offered_rate"] == 20.0
    assert only["requests"]["finished"] == 6
    assert len(only["per_request"]["ttft_ms"]) == 6 and all(t > 0 for t in only["per_request"]["ttft_ms"])
    assert serving["verdict"] in ("VALID", "INVALID") and serving["goodput"] is not None
    assert record["metrics"]["backend"]["batching"] == "the server's own (remote)"
    assert record["metrics"]["accuracy"]["metric"] == "perplexity"
    assert record["metrics"]["accuracy"]["value"] == pytest.approx(2.718281828, rel=1e-6)


def test_sweep_records_a_verdict_per_step(tmp_path, start_server):
    url = start_server("--slots", "2", "--ttft-s", "0.01", "--itl-s", "0.002")
    done = run_cli(
        *QUICK,
        f"backend.base_url={url}",
        "scenario.load=sweep",
        "scenario.sweep.steps=4",
        "scenario.sweep.max_concurrency=4",
        "scenario.accuracy.enabled=false",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = records_in(tmp_path)
    steps = record["metrics"]["serving"]["steps"]
    assert [s["name"] for s in steps][:2] == ["synchronous", "throughput"]
    assert len(steps) == 4 and all(s["verdict"] in ("VALID", "INVALID") for s in steps)
    rates = [s["offered_rate"] for s in steps[2:]]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(steps[1]["request_throughput"])


def test_wrong_url_is_unavailable_in_one_line(tmp_path):
    done = run_cli(*QUICK, "backend.base_url=http://127.0.0.1:9/v1", f"results_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 3
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("harness: ")]  # beside the progress header
    assert len(errors) == 1 and "no server answers at http://127.0.0.1:9/v1/models" in errors[0]
    assert "Traceback" not in done.stderr
    (record,) = records_in(tmp_path)
    assert record["status"] == "unavailable"


def test_server_killed_mid_run_fails_and_keeps_finished_requests(tmp_path, start_server):
    # warm-up 1 + 3 requests finish; the server dies in the middle of the 5th
    url = start_server("--exit-after", "4")
    done = run_cli(
        *QUICK,
        f"backend.base_url={url}",
        "scenario.load=concurrency",
        "scenario.concurrency=1",
        "scenario.requests=20",
        "backend.retries=1",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    (record,) = records_in(tmp_path)
    assert record["status"] == "failed"
    assert "server went away after 3 finished requests" in record["reason"]
    (step,) = record["metrics"]["serving"]["steps"]
    assert step["requests"]["finished"] == 3
    assert step["per_request"]["outcome"][:3] == ["ok", "ok", "ok"]
    assert "error" in step["per_request"]["outcome"][3:]


def test_api_key_is_never_recorded(tmp_path, start_server):
    url = start_server()
    done = run_cli(
        *QUICK,
        f"backend.base_url={url}",
        "backend.api_key_env=HARNESS_TEST_KEY",
        "scenario.requests=2",
        "scenario.server.rate=50",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
        env={"HARNESS_TEST_KEY": "sekrit-value-42"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = next(tmp_path.glob("*.json")).read_text()
    assert "sekrit-value-42" not in text and "HARNESS_TEST_KEY" in text


@pytest.mark.parametrize("backend", ["openai", "llamacpp", "pytorch"])
def test_llm_serve_composes_into_typed_options(backend):
    from harness.plugins import load_plugins
    from harness.testing import compose_overrides

    spec = compose_overrides(["+scenario=llm_serve", f"backend={backend}", "scenario.load=sweep", "scenario.slo.tpot_ms=50"], load_plugins())
    opts = spec.scenario_options
    assert spec.scenario_kind == "serving" and spec.model.name == "llama_small" and spec.dataset.kind == "corpus"
    assert opts.load == "sweep" and opts.slo.tpot_ms == 50 and opts.workload.prompt_tokens == 64
    assert not hasattr(opts, "batch_size")  # a kind's options hold its own keys only (no inherited default scenario)


@pytest.mark.parametrize(
    "override, key",
    [
        ("scenario.load=burst", "scenario.load"),
        ("scenario.server.rate=0", "scenario.server.rate"),
        ("scenario.slo.percentile=120", "scenario.slo.percentile"),
        ("backend.base_url=localhost:8080", "backend.base_url"),
    ],
)
def test_bad_serving_options_are_one_line_config_errors(override, key):
    from harness.errors import ConfigError
    from harness.plugins import load_plugins
    from harness.testing import compose_overrides

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_overrides(["+scenario=llm_serve", "backend=openai", override], load_plugins())
