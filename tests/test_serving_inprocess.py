"""In-process serving: a blocking engine in a worker thread, FIFO, never blocking the load generator."""

import asyncio
import threading
import time

import pytest

from conftest import records_in, run_cli
from harness.generation.session import GenerationOutput, now
from harness.serving.inprocess import GenerationServingSession
from harness.serving.load import Limits, Load, run_step
from harness.serving.session import GenerationRequest, StreamEnd, ThreadedSession, TokenChunk

STEP_S = 0.02


class SleepyGeneration:
    """A GenerationSession stand-in: STEP_S per token, timestamps taken as tokens 'appear'."""

    device = "cpu"

    def __init__(self):
        self.calls = []
        self.closed = False

    def generate(self, prompts, max_new_tokens, decoding=None):
        start = now()
        outputs = []
        for prompt in prompts:
            self.calls.append(list(prompt))
            times = []
            for _ in range(max_new_tokens):
                time.sleep(STEP_S)
                times.append(now())
            outputs.append(GenerationOutput(list(range(max_new_tokens)), times, start, len(prompt)))
        return outputs

    def metrics(self):
        return {"engine": "sleepy"}

    def close(self):
        self.closed = True


def test_fifo_serving_over_a_generation_session():
    engine = SleepyGeneration()
    session = GenerationServingSession(engine, None, "fp32", "fake")
    requests = [GenerationRequest(i, "", 3, prompt_ids=(1, 2, i)) for i in range(3)]

    async def go():
        try:
            return await run_step(session, requests, Load("concurrency", concurrency=3), Limits(3, 30, 30))
        finally:
            await session.aclose()

    result = asyncio.run(go())
    assert engine.closed and sorted(engine.calls) == [[1, 2, 0], [1, 2, 1], [1, 2, 2]]
    records = sorted(result.records, key=lambda r: r.ttft_ms)
    assert all(r.ok and r.output_tokens == 3 and r.prompt_tokens == 3 for r in records)
    # one at a time: the k-th in line waits for k whole requests before its first token
    for k, record in enumerate(records):
        assert record.ttft_ms >= (3 * k + 1) * STEP_S * 1000 * 0.95
    assert session.metrics()["batching"].startswith("none: one request at a time (FIFO)")


class Endless(ThreadedSession):
    """Emits a token every STEP_S until told to stop (cancellation must reach the worker)."""

    def __init__(self):
        super().__init__(workers=1)
        self.stopped = threading.Event()

    def generate(self, request, emit):
        try:
            while True:
                time.sleep(STEP_S)
                emit(TokenChunk(now()))
        finally:
            self.stopped.set()
        return StreamEnd(now())  # pragma: no cover


def test_a_request_cut_by_its_timeout_stops_the_worker_and_the_loop_stays_free():
    session = Endless()
    ticks = []

    async def ticker():
        for _ in range(10):
            ticks.append(now())
            await asyncio.sleep(0.01)

    async def go():
        try:
            return (await asyncio.gather(run_step(session, [GenerationRequest(0, "x", 5)], Load("concurrency", concurrency=1), Limits(1, 30, 0.3)), ticker()))[
                0
            ]
        finally:
            await session.aclose()

    result = asyncio.run(go())
    (record,) = result.records
    assert record.outcome == "error" and "request_timeout_s=0.3" in record.error
    assert len(record.chunk_times) >= 1
    assert session.stopped.wait(5)  # the worker saw the cancellation at its next token
    assert len(ticks) == 10  # the event loop kept running while the engine decoded


@pytest.mark.slow
def test_llm_serve_on_a_generation_backend(tmp_path):
    """backend=pytorch serves through transformers' continuous batching; the record says so and
    carries the engine's own batch sizes (FIFO over the generation session: test_serving_batched)."""
    done = run_cli(
        "+scenario=llm_serve",
        "backend=pytorch",
        "model=llama_tiny",
        "scenario.requests=4",
        "scenario.load=concurrency",
        "scenario.concurrency=2",
        "scenario.workload.prompt_tokens=12",
        "scenario.workload.output_tokens=6",
        "scenario.warmup_requests=1",
        "scenario.accuracy.texts=2",
        "scenario.accuracy.window=32",
        "launcher.host_lock=false",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = records_in(tmp_path)
    assert record["status"] == "ok" and record["scenario"]["precision"] == "fp32"
    (step,) = record["metrics"]["serving"]["steps"]
    assert step["requests"]["finished"] == 4 and step["per_request"]["prompt_tokens"] == [12] * 4
    assert record["metrics"]["backend"]["batching"].startswith("continuous: transformers'")
    assert step["engine_batches"]["engine_steps"] >= 6 and step["engine_batches"]["batch_size_max"] <= 2
    accuracy = record["metrics"]["accuracy"]
    assert accuracy["metric"] == "perplexity" and accuracy["relative"] == pytest.approx(1.0, abs=1e-3)
