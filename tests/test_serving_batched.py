"""Batched serving: concurrent requests run together in the engine and decode as if alone.

For each in-process engine (openvino-genai continuous batching, transformers continuous
batching, the batched ONNX Runtime decoder): the same requests served all at once and
one at a time give the same greedy tokens (and those of eager fp32 without a cache);
every token has its own host timestamp; and the engine's *own* per-step counts show
that the concurrent requests shared steps while the lone ones did not. Never speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
import time

import pytest

from harness.serving.batching import BatchingOptions, BatchStats, EngineThreadSession, SteppedEngine
from harness.serving.session import GenerationRequest, ServerGone, ServingModel, ServingPlan, StreamEnd, TokenChunk, now

NEW_TOKENS = 8
PROMPTS = [
    [734, 361, 412, 262, 377, 257, 380, 359, 525, 262, 379, 257],
    [299, 41, 87, 120, 99, 101, 77, 55, 66],
    [12, 13, 14, 15, 16, 17, 18],
    [400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416],
]


async def serve(session, requests, together: bool):
    """Each request's (token ids, token times, end, sent time): all at once, or one after another."""

    async def one(request):
        sent = now()
        ids, times, end = [], [], None
        async for event in session.stream(request):
            if isinstance(event, StreamEnd):
                end = event
            else:
                ids.extend(event.ids)
                times.append(event.t)
        return ids, times, end, sent

    if together:
        return await asyncio.gather(*(one(r) for r in requests))
    return [await one(r) for r in requests]


def requests_for(prompts, new_tokens=NEW_TOKENS):
    return [GenerationRequest(i, "", new_tokens, prompt_ids=tuple(p)) for i, p in enumerate(prompts)]


# -- the engine thread, on a fake engine ---------------------------------------------------------------------------


class CountingEngine(SteppedEngine):
    """Each step emits token ``len(prompt) + produced`` for every running request (slow enough to overlap)."""

    def __init__(self, fail_after: int | None = None):
        self.running: dict[int, list] = {}
        self.steps = 0
        self.fail_after = fail_after
        self.cancelled: list[int] = []
        self.closed = False
        self.added = 0

    def add(self, request, prompt):
        self.added += 1
        self.running[self.added] = [request.max_tokens, len(prompt), [], False, 0]  # max, prompt, fresh, done, produced
        return self.added

    def busy(self):
        return any(not state[3] for state in self.running.values())

    def step(self):
        self.steps += 1
        if self.fail_after is not None and self.steps > self.fail_after:
            raise RuntimeError("device lost")
        time.sleep(0.01)
        live = [s for s in self.running.values() if not s[3]]
        for state in live:
            state[2].append(state[1] + state[4])
            state[4] += 1
            state[3] = state[4] >= state[0]
        return len(live)

    def collect(self, handle):
        state = self.running[handle]
        tokens, state[2] = state[2], []
        if state[3]:
            del self.running[handle]
        return tokens, state[3]

    def cancel(self, handle):
        self.cancelled.append(handle)
        self.running.pop(handle, None)

    def close(self):
        self.closed = True


def test_engine_thread_serves_concurrent_requests_in_shared_steps():
    engine = CountingEngine()
    session = EngineThreadSession(engine, None, "fp32", {"engine": "counting"})

    async def go():
        try:
            session.take_batch_stats()
            together = await serve(session, requests_for(PROMPTS, 5), together=True)
            stats_together = session.take_batch_stats()
            alone = await serve(session, requests_for(PROMPTS, 5), together=False)
            return together, stats_together, alone, session.take_batch_stats()
        finally:
            await session.aclose()

    together, stats_together, alone, stats_alone = asyncio.run(go())
    assert engine.closed
    for (ids, times, end, sent), prompt in zip(together, PROMPTS):
        assert ids == list(range(len(prompt), len(prompt) + 5))
        assert len(times) == 5 and times == sorted(times) and times[0] >= sent
        assert end.output_tokens == 5 and end.prompt_tokens == len(prompt) and end.finish_reason == "length"
    assert [r[0] for r in alone] == [r[0] for r in together]
    assert stats_together["batch_size_max"] == len(PROMPTS)
    assert stats_alone["batch_size_max"] == 1 and stats_alone["engine_steps"] == 5 * len(PROMPTS)


def test_engine_thread_cancels_a_request_whose_consumer_left():
    engine = CountingEngine()
    session = EngineThreadSession(engine, None, "fp32", {})

    async def go():
        try:

            async def first_token_only():
                async with contextlib.aclosing(session.stream(GenerationRequest(0, "", 1000, prompt_ids=(1, 2)))) as events:
                    async for event in events:
                        if isinstance(event, TokenChunk):
                            return event

            return await first_token_only()
        finally:
            await session.aclose()

    assert isinstance(asyncio.run(go()), TokenChunk)
    assert len(engine.cancelled) == 1 and not engine.running


def test_an_engine_failure_fails_its_requests_then_the_session_is_gone():
    session = EngineThreadSession(CountingEngine(fail_after=2), None, "fp32", {})

    async def go():
        try:
            with pytest.raises(ServerGone, match="device lost"):
                await serve(session, requests_for(PROMPTS[:2], 5), together=True)
            with pytest.raises(ServerGone, match="engine failed"):
                await serve(session, requests_for(PROMPTS[:1], 5), together=True)
        finally:
            await session.aclose()

    asyncio.run(go())


def test_batch_stats_count_and_reset():
    stats = BatchStats()
    for size in (1, 3, 3, 0):
        stats.record(size)
    assert stats.take() == {"engine_steps": 3, "batch_size_max": 3, "batch_size_mean": pytest.approx(7 / 3), "batch_size_histogram": {"1": 1, "3": 2}}
    assert stats.take()["engine_steps"] == 0


def test_cache_blocks_round_each_request_up_to_whole_blocks():
    plan = ServingPlan("fp32", max_prompt_tokens=40, max_output_tokens=10)
    assert BatchingOptions(max_batch=4).cache_blocks(plan, 32) == 4 * 2
    assert BatchingOptions(cache_tokens=100).cache_blocks(plan, 32) == 4


def test_bad_batching_options_name_the_key():
    with pytest.raises(ValueError, match="serving.max_batch"):
        BatchingOptions(max_batch=0)
    with pytest.raises(ValueError, match="serving.mode"):
        BatchingOptions(mode="dynamic")


# -- the real engines on llama_tiny ---------------------------------------------------------------------------------


def backend(name: str, **options):
    from harness.config import typed
    from harness.plugins import load_plugins

    cls = load_plugins().registry.backend(name)
    return cls(typed(cls.options_type, options, "backend"))


ENGINES = [
    pytest.param(
        "openvino",
        "ContinuousBatchingPipeline",
        marks=pytest.mark.skipif(importlib.util.find_spec("openvino_genai") is None, reason="openvino-genai is not installed (harness[llm])"),
    ),
    pytest.param("pytorch", "ContinuousBatchingManager"),
    pytest.param("onnxruntime", "IOBinding"),
]


@pytest.fixture(scope="module")
def eager_tokens(llama_source):
    from test_generation_backends import greedy_without_cache

    return [greedy_without_cache(llama_source.module, p, NEW_TOKENS) for p in PROMPTS]


@pytest.mark.parametrize("name,engine", ENGINES)
def test_batched_engine_matches_one_at_a_time_and_eager(name, engine, llama_source, eager_tokens):
    from harness.serving.workload import PlainTokenizer

    model = ServingModel("llama_tiny", lambda: llama_source, lambda: PlainTokenizer(llama_source.tokenizer), None, lambda message: None)
    plan = ServingPlan("fp32", max_prompt_tokens=max(map(len, PROMPTS)), max_output_tokens=NEW_TOKENS, max_in_flight=4)
    session = backend(name, serving={"max_batch": 4, "max_batched_tokens": 64}).prepare_serving(model, plan)

    async def go():
        try:
            session.take_batch_stats()
            together = await serve(session, requests_for(PROMPTS), together=True)
            stats_together = session.take_batch_stats()
            alone = await serve(session, requests_for(PROMPTS), together=False)
            return together, stats_together, alone, session.take_batch_stats(), session.metrics()
        finally:
            await session.aclose()

    together, stats_together, alone, stats_alone, facts = asyncio.run(go())
    assert [r[0] for r in together] == eager_tokens
    assert [r[0] for r in alone] == eager_tokens
    for ids, times, end, sent in together + alone:
        assert len(times) == NEW_TOKENS and times == sorted(times) and times[0] >= sent
        assert end.output_tokens == NEW_TOKENS
    # the engine's own counts: requests sent together shared steps, requests sent alone never did
    assert stats_together["batch_size_max"] >= 2, stats_together
    assert stats_alone["batch_size_max"] == 1, stats_alone
    assert facts["batching"].startswith("continuous") and engine in facts["engine"] + facts["batching"]
    assert facts["max_batch"] == 4


@pytest.mark.parametrize("name", ["openvino", "pytorch", "onnxruntime"])
def test_fifo_mode_serves_through_the_generation_session(name, llama_source):
    from harness.serving.inprocess import GenerationServingSession
    from harness.serving.workload import PlainTokenizer

    if name == "openvino" and importlib.util.find_spec("openvino_genai") is None:
        pytest.skip("openvino-genai is not installed (harness[llm])")
    model = ServingModel("llama_tiny", lambda: llama_source, lambda: PlainTokenizer(llama_source.tokenizer))
    session = backend(name, serving={"mode": "fifo"}).prepare_serving(model, ServingPlan("fp32", 32, 4))
    assert isinstance(session, GenerationServingSession)
    assert session.metrics()["batching"].startswith("none: one request at a time (FIFO)")
    asyncio.run(session.aclose())


def test_no_thread_is_left_behind():
    """Sessions closed above leave no engine thread running (they are daemon threads, but must end)."""
    assert not [t for t in threading.enumerate() if t.name == "harness-engine" and t.is_alive()]
