"""Serving many requests in one engine, batched the way the engine is deployed.

A FIFO session (:mod:`harness.serving.inprocess`) is the honest picture of an engine
without batching; engines people deploy batch: every scheduler step decodes one token
for each running sequence and admits waiting requests (continuous batching: requests
join and leave the running batch at token boundaries, each with its own KV cache). This
module holds what such engines share:

- :class:`BatchingOptions`: ``backend.serving.*``, one meaning on every backend (mode,
  sequences per step, tokens per step, KV cache capacity in tokens);
- :class:`BatchStats`: the engine's *own* count of sequences in each step, which is how
  a record (and a test) shows that requests really ran together, never speed;
- :class:`SteppedEngine` and :class:`EngineThreadSession`: an engine whose scheduler is
  stepped by the caller (openvino-genai's ``ContinuousBatchingPipeline``, the harness's
  batched ONNX Runtime decoder) runs in one engine thread; requests reach it through an
  inbox, and each request's tokens go back to the event loop on its own queue, stamped
  with the host time the step that produced them returned.

An engine with its own background thread (transformers' ``ContinuousBatchingManager``)
implements :class:`~harness.serving.session.ServingSession` directly and reuses
:class:`BatchStats`.
"""

from __future__ import annotations

import abc
import asyncio
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional

from harness.config import choice, require
from harness.serving.session import (
    Failure,
    GenerationRequest,
    ServerGone,
    ServingPlan,
    ServingSession,
    StreamEnd,
    StreamEvent,
    TokenChunk,
    Tokenizer,
    now,
    relay,
)

MODES = ("continuous", "fifo")


@dataclass
class BatchingOptions:
    """``backend.serving.*``: how an in-process engine serves concurrent requests.

    ``mode``: ``continuous`` (the engine's batching scheduler) or ``fifo`` (one request
    at a time through the generation session, for comparison). ``max_batch``: sequences
    per scheduler step. ``max_batched_tokens``: tokens per step (long prompts are
    prefilled in chunks of at most this many, beside the running decodes, where the
    engine does that). ``cache_tokens``: KV cache capacity in tokens; 0 = enough for
    ``max_batch`` requests of the workload's longest prompt + output.
    """

    mode: str = "continuous"
    max_batch: int = 8
    max_batched_tokens: int = 256
    cache_tokens: int = 0

    def __post_init__(self) -> None:
        choice(self.mode, MODES, "serving.mode")
        require(self.max_batch >= 1, "serving.max_batch", f"must be >= 1 sequence, got {self.max_batch}")
        require(self.max_batched_tokens >= 1, "serving.max_batched_tokens", f"must be >= 1, got {self.max_batched_tokens}")
        require(self.cache_tokens >= 0, "serving.cache_tokens", f"must be >= 0 (0 = sized from the workload), got {self.cache_tokens}")

    def cache_blocks(self, plan: ServingPlan, block_tokens: int) -> int:
        """KV cache blocks of ``block_tokens`` tokens: ``cache_tokens`` worth, else ``max_batch``
        whole requests of the plan's longest prompt + output (each request rounds up to whole blocks)."""
        if self.cache_tokens:
            return math.ceil(self.cache_tokens / block_tokens)
        return self.max_batch * math.ceil((plan.max_prompt_tokens + plan.max_output_tokens) / block_tokens)


@dataclass
class BatchStats:
    """Sequences the engine put in each of its steps, counted by the engine itself.

    Thread-safe: the engine's thread records, the event loop takes. ``take`` returns the
    figures since the previous ``take`` and starts afresh, so each load step of a run
    gets its own (the warm-up's are dropped).
    """

    sizes: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, sequences: int) -> None:
        if sequences > 0:
            with self._lock:
                self.sizes[int(sequences)] += 1

    def take(self) -> dict[str, Any]:
        with self._lock:
            sizes, self.sizes = self.sizes, Counter()
        steps = sum(sizes.values())
        total = sum(size * count for size, count in sizes.items())
        return {
            "engine_steps": steps,
            "batch_size_max": max(sizes, default=0),
            "batch_size_mean": total / steps if steps else None,
            "batch_size_histogram": {str(size): sizes[size] for size in sorted(sizes)},
        }


class LazyScorer:
    """Token-id scoring (perplexity beside eager fp32) through a generation session built on
    first use: batching engines return no logits, the backend's generation session does.
    ``build(ids)`` makes that session for the shape of the first ids it is asked to score."""

    def __init__(self, build: Callable[[Any], Any]) -> None:
        self._build = build
        self._session: Any = None

    def score(self, ids: Any) -> Any:
        if self._session is None:
            self._session = self._build(ids)
        return self._session.score(ids)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


class SteppedEngine(abc.ABC):
    """A batching engine stepped by :class:`EngineThreadSession`'s thread (never concurrently).

    ``add`` hands a request to the engine's scheduler and returns the engine's handle;
    ``step`` runs one scheduler step and returns how many sequences that step computed
    (the engine's own count); ``collect`` returns the tokens a request produced since the
    last call and whether it is finished; ``cancel`` frees a request's slot and cache.
    """

    @abc.abstractmethod
    def add(self, request: GenerationRequest, prompt: list[int]) -> Any: ...

    @abc.abstractmethod
    def busy(self) -> bool:
        """Whether any request is waiting or running."""

    @abc.abstractmethod
    def step(self) -> int: ...

    @abc.abstractmethod
    def collect(self, handle: Any) -> tuple[list[int], bool]: ...

    @abc.abstractmethod
    def cancel(self, handle: Any) -> None: ...

    def metrics(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Release the engine (called in the engine thread's place once it stopped)."""


@dataclass(eq=False)  # identity: tickets are found in lists by who they are
class _Ticket:
    request: GenerationRequest
    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    queue: "asyncio.Queue[Any]"
    handle: Any = None
    produced: int = 0
    cancelled: bool = False


class EngineThreadSession(ServingSession):
    """Streams requests through a :class:`SteppedEngine` driven by one engine thread.

    The thread sleeps while nothing is waiting or running; otherwise it admits new
    requests, drops cancelled ones, runs one step, and posts each request's new tokens
    (``TokenChunk(t)``, ``t`` = the host time the step returned, so its tokens are on the
    host) and, once finished, its :class:`StreamEnd`. If the engine raises, every request
    in it fails with that error and the session answers :class:`ServerGone` afterwards:
    the engine is gone, as a crashed server would be.
    """

    def __init__(
        self,
        engine: SteppedEngine,
        tokenizer: Optional[Tokenizer],
        precision: str,
        facts: dict[str, Any],
        scorer: Optional[LazyScorer] = None,
        device: str = "cpu",
    ) -> None:
        self.engine = engine
        self.precision = precision
        self.device = device
        self.stats = BatchStats()
        self._tokenizer = tokenizer
        self._facts = facts
        self._scorer = scorer
        self._inbox: list[_Ticket] = []
        self._cancels: list[_Ticket] = []
        self._active: list[_Ticket] = []
        self._wake = threading.Condition()
        self._closing = False
        self._broken: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name="harness-engine", daemon=True)
        self._thread.start()

    # -- event loop side --
    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        if self._broken is not None:
            raise ServerGone(self._broken)
        prompt = list(request.prompt_ids) or (list(self._tokenizer.encode(request.prompt)) if self._tokenizer else [])
        if not prompt:
            raise ValueError("an in-process engine needs token ids, and no tokenizer is known")
        ticket = _Ticket(request, prompt, asyncio.get_running_loop(), asyncio.Queue())
        with self._wake:
            self._inbox.append(ticket)
            self._wake.notify()
        try:
            async for event in relay(ticket.queue):
                yield event
        finally:
            with self._wake:
                ticket.cancelled = True
                self._cancels.append(ticket)
                self._wake.notify()

    def tokenizer(self) -> Optional[Tokenizer]:
        return self._tokenizer

    def scorer(self) -> Any:
        return self._scorer

    def take_batch_stats(self) -> dict[str, Any]:
        return self.stats.take()

    def metrics(self) -> dict[str, Any]:
        return {**self._facts, **self.engine.metrics()}

    async def aclose(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self.engine.close()
        if self._scorer is not None:
            self._scorer.close()

    # -- engine thread side --
    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (self._closing or self._inbox or self._cancels or self.engine.busy()):
                        self._wake.wait()
                    new, self._inbox = self._inbox, []
                    gone, self._cancels = self._cancels, []
                    closing = self._closing
                for ticket in gone:  # consumers that left free their slots, even when closing
                    if ticket in self._active:
                        self._active.remove(ticket)
                        self.engine.cancel(ticket.handle)
                if closing:
                    return
                for ticket in new:
                    if not ticket.cancelled:
                        ticket.handle = self.engine.add(ticket.request, ticket.prompt)
                        self._active.append(ticket)
                if self.engine.busy():
                    self.stats.record(self.engine.step())
                    self._deliver(now())
        except BaseException as exc:  # noqa: BLE001 - the engine died: every request learns why
            self._broken = f"the engine failed: {type(exc).__name__}: {exc}"
            for ticket in self._active + self._inbox:
                self._post(ticket, Failure(ServerGone(self._broken)))

    def _deliver(self, stamp: float) -> None:
        for ticket in list(self._active):
            tokens, finished = self.engine.collect(ticket.handle)
            for token in tokens:
                self._post(ticket, TokenChunk(stamp, ids=(token,)))
            ticket.produced += len(tokens)
            if finished:
                self._active.remove(ticket)
                self._post(
                    ticket,
                    StreamEnd(
                        now(),
                        prompt_tokens=len(ticket.prompt),
                        output_tokens=ticket.produced,
                        finish_reason="length" if ticket.produced >= ticket.request.max_tokens else "stop",
                    ),
                )

    @staticmethod
    def _post(ticket: _Ticket, item: Any) -> None:
        if ticket.cancelled or ticket.loop.is_closed():
            return
        try:
            ticket.loop.call_soon_threadsafe(ticket.queue.put_nowait, item)
        except RuntimeError:  # the loop closed in between: nobody is listening
            pass
