"""The asynchronous load generator: arrival processes driving a :class:`ServingSession`.

One *step* serves a list of requests at one load level:

- ``poisson``: requests arrive as a Poisson process at ``rate`` req/s (exponential
  gaps from a seeded generator: the same seed gives the same schedule), each sent at
  its arrival time whatever is still in flight: an open loop, so queueing shows in
  TTFT, as in MLPerf's server scenario and vLLM's ``--request-rate``;
- ``constant``: arrivals evenly spaced at ``rate`` req/s (guidellm's sweep default);
- ``concurrency``: a closed loop of ``concurrency`` users, each sending its next
  request when the previous one ends (``concurrency=1`` is guidellm's *synchronous*).

Everything is bounded: at most ``max_requests`` are issued, none after ``max_seconds``,
each request is cut at ``request_timeout_s``, and a request still running at the
step's end is cancelled (recorded ``incomplete``), so a step lasts at most
``max_seconds + request_timeout_s``. A :class:`ServerGone` error stops the step: no
further request is issued, and the step reports why it was aborted.

The loop never blocks: arrivals are ``asyncio`` sleeps, each request is its own task,
and sessions stream without blocking (in-process engines decode in worker threads).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from harness.errors import exception_line
from harness.serving.session import GenerationRequest, ServerGone, ServingSession, StreamEnd, now
from harness.serving.timing import RequestRecord

KINDS = ("poisson", "constant", "concurrency")


@dataclass(frozen=True)
class Load:
    """One load level: an arrival process and its parameter."""

    kind: str
    rate: Optional[float] = None
    concurrency: Optional[int] = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown load kind '{self.kind}'; use one of {', '.join(KINDS)}")
        if self.kind == "concurrency":
            if not self.concurrency or self.concurrency < 1:
                raise ValueError("a concurrency load needs concurrency >= 1")
        elif not self.rate or self.rate <= 0:
            raise ValueError(f"a {self.kind} load needs a rate > 0 req/s")

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return f"concurrency@{self.concurrency}" if self.kind == "concurrency" else f"{self.kind}@{self.rate:.4g}"

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "rate": self.rate, "concurrency": self.concurrency}


@dataclass(frozen=True)
class Limits:
    """Bounds of one step (count and time)."""

    max_requests: int
    max_seconds: float
    request_timeout_s: float

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_seconds <= 0 or self.request_timeout_s <= 0:
            raise ValueError("limits need max_requests >= 1, max_seconds > 0 and request_timeout_s > 0")


@dataclass
class StepResult:
    """The requests one step issued, when it started, and why it stopped early (if it did)."""

    load: Load
    records: list[RequestRecord]
    started: float
    ended: float
    aborted: Optional[str] = None
    stopped_issuing: Optional[str] = None
    extra: dict = field(default_factory=dict)


def arrival_offsets(load: Load, count: int, seed: int) -> np.ndarray:
    """Arrival times (s from the step's start) of ``count`` requests; the first at 0."""
    assert load.rate is not None
    if load.kind == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / load.rate, size=count)
    else:
        gaps = np.full(count, 1.0 / load.rate)
    offsets = np.cumsum(gaps)
    return offsets - offsets[0]


async def _serve_one(session: ServingSession, request: GenerationRequest, record: RequestRecord, timeout_s: float) -> None:
    """Stream one request into ``record``; a :class:`ServerGone` propagates to the caller."""

    async def consume() -> None:
        async for event in session.stream(request):
            if isinstance(event, StreamEnd):
                record.finish(event)
            else:
                record.add(event)
        if not record.ok:
            record.fail("the stream ended without its final event", now())

    try:
        await asyncio.wait_for(consume(), timeout_s)
    except asyncio.TimeoutError:
        record.fail(f"no complete response within request_timeout_s={timeout_s:g}", now())
    except asyncio.CancelledError:
        record.fail("cancelled at the end of the step", now(), outcome="incomplete")
        raise
    except ServerGone as exc:
        record.fail(f"server gone: {exc}", now())
        raise
    except Exception as exc:  # one failed request; the load goes on
        record.fail(exception_line(exc, 300), now())


async def run_step(
    session: ServingSession,
    requests: Sequence[GenerationRequest],
    load: Load,
    limits: Limits,
    seed: int = 0,
) -> StepResult:
    """Serve ``requests`` (at most ``limits.max_requests``) at ``load``; never raises for a request."""
    todo = list(requests[: limits.max_requests])
    if not todo:
        raise ValueError("a step needs at least one request")
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task[None]] = []
    state: dict[str, Optional[str]] = {"aborted": None, "stopped": None}
    started = now()
    deadline = started + limits.max_seconds

    async def tracked(request: GenerationRequest, scheduled: float) -> None:
        record = RequestRecord(request.index, scheduled, now())
        records.append(record)
        try:
            await _serve_one(session, request, record, limits.request_timeout_s)
        except ServerGone as exc:
            if state["aborted"] is None:
                state["aborted"] = f"the server went away after {sum(r.ok for r in records)} finished requests: {exc}"

    def may_issue() -> bool:
        if state["aborted"] is not None:
            return False
        if now() >= deadline:
            state["stopped"] = state["stopped"] or f"max_seconds={limits.max_seconds:g} reached"
            return False
        return True

    if load.kind == "concurrency":
        queue = iter(todo)

        async def user() -> None:
            for request in queue:  # shared iterator: each request goes to exactly one user
                if not may_issue():
                    return
                await tracked(request, now())

        tasks = [asyncio.create_task(user()) for _ in range(min(load.concurrency or 1, len(todo)))]
    else:
        for request, offset in zip(todo, arrival_offsets(load, len(todo), seed)):
            at = started + float(offset)
            if at >= deadline:
                state["stopped"] = f"max_seconds={limits.max_seconds:g} reached"
                break
            delay = at - now()
            if delay > 0:
                await asyncio.sleep(delay)
            if state["aborted"] is not None:  # the schedule, not a late wake-up, decides the deadline
                break
            tasks.append(asyncio.create_task(tracked(request, at)))

    # Drain: each request is bounded by its own timeout; this outer bound is the backstop.
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=limits.max_seconds + limits.request_timeout_s + 5.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    records.sort(key=lambda r: (r.scheduled, r.index))
    return StepResult(load, records, started, now(), state["aborted"], state["stopped"])
