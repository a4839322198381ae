"""The streaming, asynchronous session API that the ``serving`` scenario drives.

A serving session takes many generation requests at once and streams each one's
output as it is produced. The load generator awaits nothing but these streams, so
the event loop that issues arrivals is never blocked by an engine:

- a remote server (``backend=openai``) streams over HTTP; a chunk's timestamp is the
  host time its bytes were read;
- an in-process engine runs its blocking decode loop in worker threads
  (:class:`ThreadedSession`); a token's timestamp is taken in the worker the moment
  the engine hands the token over, then the token is passed to the event loop. A
  queued request waits in the session, and that wait is part of its TTFT, as it is
  on a real server.

How requests share the engine is the session's own business and it says so in
:meth:`ServingSession.metrics` (``batching``), which lands in ``metrics.backend``:
one at a time (FIFO), N parallel slots, continuous batching in the engine, or
whatever a remote server does. An engine with continuous batching (openvino-genai's
pipeline, a batched torch scheduler) implements :meth:`ServingSession.stream` over its
own scheduler instead of subclassing :class:`ThreadedSession`.
"""

from __future__ import annotations

import abc
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Protocol, Sequence, Union


@dataclass(frozen=True)
class GenerationRequest:
    """One request of a workload.

    ``prompt`` is always set (text for HTTP servers); ``prompt_ids`` too when the
    workload was tokenized with the serving model's own tokenizer, so an in-process
    engine can skip re-tokenizing. ``max_tokens`` is the output length asked for;
    ``ignore_eos`` asks the engine to produce exactly that many tokens (a fixed output
    length is what makes runs comparable).
    """

    index: int
    prompt: str
    max_tokens: int
    prompt_ids: tuple[int, ...] = ()
    ignore_eos: bool = True


@dataclass(frozen=True)
class TokenChunk:
    """Output that became available at host time ``t`` (``time.perf_counter``).

    ``tokens`` is how many tokens it carries: 1 for an engine that emits token by
    token; a server may pack several into one streamed chunk. ``ids`` are their token
    ids when the engine knows them (in-process engines: greedy tokens are then checked
    against eager fp32).
    """

    t: float
    tokens: int = 1
    text: str = ""
    logprobs: tuple[float, ...] = ()
    ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class StreamEnd:
    """The end of one request's stream, at host time ``t``, with the engine's own counts.

    ``output_tokens`` and ``prompt_tokens`` are what the engine or server reports
    (``usage``); None when it reports nothing. ``server`` keeps the server's own
    timings when it sends them (llama.cpp's ``timings``), for cross-checks.
    """

    t: float
    prompt_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    finish_reason: Optional[str] = None
    server: dict[str, Any] = field(default_factory=dict)


StreamEvent = Union[TokenChunk, StreamEnd]


class ServerGone(ConnectionError):
    """The engine or server is not there anymore (connection refused or dropped).

    Unlike a failed request, it ends the load: the generator stops issuing requests
    and the run ends ``failed`` with every finished request kept in the record.
    """


class Tokenizer(Protocol):
    """What the workload builder needs from a tokenizer (``tokenizers``/transformers fit)."""

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class ServingModel:
    """The run's model as a backend may need it to serve; a remote server needs none of it.

    Both are built on first call, so a client of a remote server never builds a model:
    ``source()`` is the decoder (:class:`harness.generation.session.DecoderSource`: the
    module, its tokenizer, its saved folder for converters); ``tokenizer()`` is the
    tokenizer prompts are counted with (``model.path``'s own, else the harness's).
    """

    name: str
    source: Callable[[], Any]
    tokenizer: Callable[[], Optional["Tokenizer"]]
    cache_root: Optional[str] = None
    status: Callable[[str], None] = print


@dataclass(frozen=True)
class ServingPlan:
    """What a serving session is prepared for: the precision and the workload's bounds.

    ``precision`` is the scenario's (``auto`` = the backend's usual deployment type);
    ``max_prompt_tokens`` and ``max_output_tokens`` bound every request of the run, and
    ``max_in_flight`` is how many requests the load keeps in flight at most (None: an
    open loop, unbounded). Engines size their KV cache and batch from these.
    """

    precision: str = "auto"
    max_prompt_tokens: int = 128
    max_output_tokens: int = 64
    max_in_flight: Optional[int] = None


class ServingSession(abc.ABC):
    """Many concurrent, streamed generation requests against one engine or server."""

    #: What the scenario records as ``scenario.precision`` for this session.
    precision: str = "unknown"
    #: The device the engine runs on (the record's ``backend.device``; one source, as
    #: ``Session.device`` is for inference): ``cpu``, ``cuda:0``, ``GPU``, or ``remote``.
    device: str = "cpu"

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Yield :class:`TokenChunk` events as output arrives, then one :class:`StreamEnd`.

        Raise :class:`ServerGone` when the engine or server cannot be reached any more;
        any other exception fails this request only. Cancelling the iteration (the
        step's deadline) must stop the work the request still holds.
        """

    def tokenizer(self) -> Optional[Tokenizer]:
        """The serving model's tokenizer, when the session knows it (prompts are then
        cut to exact token counts); None otherwise."""
        return None

    def scorer(self) -> Any:
        """An object whose ``score(ids)`` gives next-token log-probabilities (the
        :class:`~harness.generation.session.GenerationSession` ``score`` contract) for
        perplexity beside the eager fp32 reference; None when the engine cannot score
        token ids (then :meth:`perplexity` on text is tried)."""
        return None

    def metrics(self) -> dict[str, Any]:
        """Engine facts for ``metrics.backend`` (plugin API 2, like ``Session.metrics``): above all
        ``engine`` and ``batching``, what the engine does with concurrent requests (one at a time,
        continuous batching and its sizes, a remote server's own), plus KV cache sizing."""
        return {}

    def take_batch_stats(self) -> Optional[dict[str, Any]]:
        """The engine's own batch sizes since the last call (and forget them), for an
        engine that batches requests (:class:`harness.serving.batching.BatchStats`);
        None for one that does not, or that cannot see its batches (a remote server)."""
        return None

    async def perplexity(self, texts: Sequence[str]) -> dict[str, Any]:
        """Perplexity of the served model on ``texts``: ``{"value": float | None, "reason": str, "tokens": int}``.

        The default says why there is none; sessions that can score prompts override it.
        """
        return {"value": None, "reason": f"{type(self).__name__} cannot score text", "tokens": 0}

    async def aclose(self) -> None:
        """Release connections, threads and engine memory."""


class RequestCancelled(Exception):
    """Raised inside a worker's ``emit`` when the request's consumer has gone away."""


Emit = Callable[[TokenChunk], None]


class ThreadedSession(ServingSession):
    """An in-process engine whose decode loop blocks: it runs in worker threads.

    ``workers`` threads each run one request at a time (``1`` = strictly FIFO, the
    honest description of an engine without batching). Subclasses implement
    :meth:`generate` and call ``emit(TokenChunk(time.perf_counter(), ...))`` for every
    token the moment the engine produces it. ``emit`` raises :class:`RequestCancelled`
    once the request was cancelled, which stops the decode loop at the next token.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harness-serving")

    @abc.abstractmethod
    def generate(self, request: GenerationRequest, emit: Emit) -> StreamEnd:
        """Decode ``request`` (blocking), emitting each token; return the end event."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def post(item: Any) -> None:
            if loop.is_closed():
                raise RequestCancelled()
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def emit(chunk: TokenChunk) -> None:
            if cancelled.is_set():
                raise RequestCancelled()
            post(chunk)

        def work() -> None:
            if cancelled.is_set():  # cancelled while queued behind other requests
                return
            try:
                end = self.generate(request, emit)
            except RequestCancelled:
                return
            except BaseException as exc:  # handed to the consumer, which fails this request
                try:
                    post(Failure(exc))
                except RequestCancelled:
                    pass
                return
            try:
                post(end)
            except RequestCancelled:
                pass

        self._executor.submit(work)
        try:
            async for event in relay(queue):
                yield event
        finally:
            cancelled.set()

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, lambda: self._executor.shutdown(wait=True, cancel_futures=True))


@dataclass(frozen=True)
class Failure:
    """Put on a request's queue by an engine thread: the consumer raises ``error``."""

    error: BaseException


async def relay(queue: "asyncio.Queue[Any]") -> AsyncIterator[StreamEvent]:
    """A request's events as an engine thread posts them on ``queue``, up to its :class:`StreamEnd`;
    a :class:`Failure` is raised in the consumer."""
    while True:
        item = await queue.get()
        if isinstance(item, Failure):
            raise item.error
        yield item
        if isinstance(item, StreamEnd):
            return


def now() -> float:
    """The host clock every timestamp of the serving package uses."""
    return time.perf_counter()
