"""Per-request timing: what one streamed request measured, and its latency figures.

Every figure comes from host timestamps taken as output arrived, never from
subtracting an estimate of something else:

- TTFT = first output chunk - request sent;
- e2e = end of the stream - request sent;
- TPOT = (e2e - TTFT) / (output tokens - 1): the mean time per token after the
  first (vLLM's ``TPOT``, guidellm's ``inter_token_latency``); undefined for one token;
- ITL = every gap between consecutive output chunks (vLLM's ``ITL``), so the tail of
  the ITL distribution shows the stalls a reader sees.

Output tokens are the engine's own count (``usage``) when it reports one, else the
sum of the tokens the chunks carried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from harness.serving.session import StreamEnd, TokenChunk

#: Request outcomes: finished, failed (error or timeout), or cut off by the step's end.
OUTCOMES = ("ok", "error", "incomplete")


@dataclass
class RequestRecord:
    """One request as the load generator saw it (times in ``perf_counter`` seconds)."""

    index: int
    scheduled: float
    sent: float
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    ended: Optional[float] = None
    reported_output_tokens: Optional[int] = None
    prompt_tokens: Optional[int] = None
    finish_reason: Optional[str] = None
    outcome: str = "incomplete"
    error: Optional[str] = None
    server: dict = field(default_factory=dict)

    def add(self, chunk: TokenChunk) -> None:
        if chunk.tokens > 0:
            self.chunk_times.append(chunk.t)
            self.chunk_tokens.append(chunk.tokens)

    def finish(self, end: StreamEnd) -> None:
        self.ended = end.t
        self.reported_output_tokens = end.output_tokens
        self.prompt_tokens = end.prompt_tokens
        self.finish_reason = end.finish_reason
        self.server = dict(end.server)
        self.outcome = "ok"

    def fail(self, error: str, at: float, outcome: str = "error") -> None:
        self.ended = at
        self.error = error
        self.outcome = outcome

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the engine's count when reported, else what the chunks carried."""
        if self.reported_output_tokens is not None:
            return self.reported_output_tokens
        return sum(self.chunk_tokens)

    @property
    def ttft_ms(self) -> Optional[float]:
        return (self.chunk_times[0] - self.sent) * 1000.0 if self.chunk_times else None

    @property
    def e2e_ms(self) -> Optional[float]:
        return (self.ended - self.sent) * 1000.0 if self.ended is not None else None

    @property
    def tpot_ms(self) -> Optional[float]:
        """(e2e - TTFT) / (tokens - 1); None for fewer than two tokens or an unfinished request."""
        ttft, e2e, tokens = self.ttft_ms, self.e2e_ms, self.output_tokens
        if ttft is None or e2e is None or not self.ok or tokens < 2:
            return None
        return (e2e - ttft) / (tokens - 1)

    @property
    def itl_ms(self) -> list[float]:
        """Gaps between consecutive output chunks, in ms."""
        times = self.chunk_times
        return [(b - a) * 1000.0 for a, b in zip(times, times[1:])]

    @property
    def schedule_lag_ms(self) -> float:
        """How late the request left compared with its arrival time (client overload)."""
        return (self.sent - self.scheduled) * 1000.0
