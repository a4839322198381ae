"""The load generator and the OpenAI client against a deterministic fake server on 127.0.0.1.

Assertions are about behaviour (counts, order, outcomes, lower bounds the fake server's
sleeps guarantee), never about speed.
"""

import asyncio
import math

import pytest

pytest.importorskip("httpx", reason="httpx is not installed (pip install 'harness[serving]')")

from fake_openai_server import Behaviour, FakeServer  # noqa: E402

from harness.backends.openai import OpenAIBackend, OpenAIOptions, OpenAIServingSession  # noqa: E402
from harness.serving.load import Limits, Load, arrival_offsets, run_step  # noqa: E402
from harness.serving.session import GenerationRequest  # noqa: E402

TTFT, ITL = 0.03, 0.01


@pytest.fixture
def server():
    fake = FakeServer(Behaviour(ttft_s=TTFT, itl_s=ITL, slots=1)).start()
    yield fake
    fake.stop()


def requests(n, max_tokens=5):
    return [GenerationRequest(i, f"prompt number {i} with words", max_tokens) for i in range(n)]


def step(server, load, n=4, limits=None, api="completions", max_tokens=5, **options):
    async def go():
        session = OpenAIServingSession(OpenAIOptions(base_url=server.base_url, api=api, **options), "fake-model", None)
        try:
            return await run_step(session, requests(n, max_tokens), load, limits or Limits(n, 60, 30), seed=1)
        finally:
            await session.aclose()

    return asyncio.run(go())


def test_synchronous_requests_stream_every_token(server):
    result = step(server, Load("concurrency", concurrency=1), n=3)
    assert [r.outcome for r in result.records] == ["ok"] * 3
    for r in result.records:
        assert r.output_tokens == 5 and len(r.chunk_times) == 5
        assert r.ttft_ms >= TTFT * 1000 * 0.99
        assert len(r.itl_ms) == 4 and min(r.itl_ms) >= 0
        # the last token leaves the server after every sleep; chunks may bunch up on the way
        assert r.e2e_ms >= (TTFT + 4 * ITL) * 1000 * 0.99 and r.tpot_ms > 0
        assert r.prompt_tokens == 5 and r.finish_reason == "length"
    # one at a time: each request is sent after the previous one ended
    for a, b in zip(result.records, result.records[1:]):
        assert b.sent >= a.ended
    assert server.bodies[0]["stream"] is True and server.bodies[0]["ignore_eos"] is True


def test_one_slot_makes_concurrent_requests_queue(server):
    result = step(server, Load("concurrency", concurrency=3), n=3)
    ttfts = sorted(r.ttft_ms for r in result.records)
    one_request_ms = (TTFT + 4 * ITL) * 1000
    # the third in line waits for two whole requests before its own first token
    assert ttfts[2] >= 2 * one_request_ms + TTFT * 1000 * 0.99


def test_poisson_issues_on_its_schedule(server):
    load = Load("poisson", rate=20.0)
    result = step(server, load, n=6)
    assert len(result.records) == 6 and all(r.ok for r in result.records)
    offsets = sorted(r.scheduled - result.started for r in result.records)
    assert offsets == pytest.approx(list(arrival_offsets(load, 6, seed=1)), abs=1e-6)
    assert all(r.sent >= r.scheduled for r in result.records)


def test_max_seconds_stops_issuing(server):
    result = step(server, Load("constant", rate=1.0), n=50, limits=Limits(50, 1.5, 30))
    assert len(result.records) == 2  # arrivals at 0 s and 1 s; the one at 2 s is past max_seconds
    assert "max_seconds=1.5" in result.stopped_issuing


def test_request_timeout_fails_the_request_not_the_step():
    slow = FakeServer(Behaviour(ttft_s=5.0, itl_s=0.01, slots=4)).start()
    try:
        result = step(slow, Load("concurrency", concurrency=2), n=2, limits=Limits(2, 30, 0.3))
    finally:
        slow.stop()
    assert [r.outcome for r in result.records] == ["error", "error"]
    assert "request_timeout_s=0.3" in result.records[0].error
    assert result.aborted is None


def test_server_gone_aborts_the_step():
    gone = FakeServer().start()
    url = gone.base_url
    gone.stop()

    async def go():
        session = OpenAIServingSession(OpenAIOptions(base_url=url, retries=1), "fake-model", None)
        try:
            return await run_step(session, requests(5), Load("concurrency", concurrency=1), Limits(5, 30, 10)), session
        finally:
            await session.aclose()

    result, session = asyncio.run(go())
    assert result.aborted and "server went away" in result.aborted
    assert len(result.records) == 1 and "cannot connect" in result.records[0].error
    assert session.retries_used == 1


def test_chat_api(server):
    result = step(server, Load("concurrency", concurrency=2), n=2, api="chat", max_tokens=3)
    assert all(r.ok and r.output_tokens == 3 for r in result.records)
    assert server.bodies[0]["messages"][0]["role"] == "user"


def test_api_key_comes_from_the_named_environment_variable(server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY_VAR", "sekrit-123")
    result = step(server, Load("concurrency", concurrency=1), n=1, api_key_env="FAKE_KEY_VAR")
    assert result.records[0].ok
    assert server.headers[0]["authorization"] == "Bearer sekrit-123"


def test_perplexity_from_echoed_logprobs(server):
    async def go():
        session = OpenAIServingSession(OpenAIOptions(base_url=server.base_url), "fake-model", None)
        try:
            return await session.perplexity(["one two three four", "five six"])
        finally:
            await session.aclose()

    scored = asyncio.run(go())
    assert scored["value"] == pytest.approx(math.e)  # -1 nat per token
    assert scored["tokens"] == 3 + 1


def test_probe(server):
    ok = OpenAIBackend.probe(OpenAIOptions(base_url=server.base_url))
    assert ok.available
    wrong_model = OpenAIBackend.probe(OpenAIOptions(base_url=server.base_url, model="other"))
    assert not wrong_model.available and "fake-model" in wrong_model.reason
    server.stop()
    gone = OpenAIBackend.probe(OpenAIOptions(base_url=server.base_url, connect_timeout_s=2))
    assert not gone.available and "no server answers at" in gone.reason and "\n" not in gone.reason
