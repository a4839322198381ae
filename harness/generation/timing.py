"""Generation timing: TTFT, TPOT, inter-token latency, e2e and token rates, from timestamps.

Every figure comes from the per-token host timestamps a
:class:`~harness.generation.session.GenerationSession` returns, never from a total
minus a prefill estimate (the subtraction optimum-benchmark does, whose decode latency
goes negative when the estimate is off). Each formula has a unit test with hand-computed
numbers on fake timestamps (``tests/test_generation_timing.py``).

Per request ``r`` with start ``s``, token times ``t_1 <= ... <= t_n`` (seconds):

* ``TTFT = t_1 - s``, ``e2e = t_n - s``;
* ``TPOT = (e2e - TTFT) / (n - 1)`` = ``(t_n - t_1) / (n - 1)``, undefined for ``n = 1``;
* ``ITL`` = every gap ``t_{i+1} - t_i`` (``n - 1`` values per request).

Per call ``c`` (one ``generate``: its requests are decoded together and share ``s``):

* ``first_c = max_r t_1``, ``last_c = max_r t_n``: prefill ``= first_c - s``, decode
  ``= last_c - first_c``, busy ``= last_c - s``.

Over all measured calls (back to back, so busy time is wall time):

* ``prefill_tokens_per_s = sum prompt tokens / sum prefill``;
* ``decode_tokens_per_s = sum_r (n_r - 1) / sum decode`` (tokens after each request's first);
* ``output_tokens_per_s = sum_r n_r / sum busy`` (every generated token, prefill included:
  what a user gets);
* ``requests_per_s = requests / sum busy``.

Latency figures are summarised with :mod:`harness.stats` (p50/p90/p95/p99, mean, std,
min, max, count, and seeded bootstrap CIs of p50/p90/p99), in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from harness import stats
from harness.generation.session import GenerationOutput

CI_PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class RequestTiming:
    """One request's figures, in seconds (``tpot_s`` None for a single token)."""

    ttft_s: float
    e2e_s: float
    tpot_s: Optional[float]
    itl_s: tuple[float, ...]
    tokens: int
    prompt_tokens: int


def request_timing(output: GenerationOutput) -> RequestTiming:
    """TTFT, e2e, TPOT and the inter-token gaps of one request."""
    times = output.token_times
    if not times:
        raise ValueError("a request with no token has no timing")
    ttft = times[0] - output.start
    e2e = times[-1] - output.start
    n = len(times)
    tpot = (e2e - ttft) / (n - 1) if n > 1 else None
    itl = tuple(b - a for a, b in zip(times, times[1:]))
    return RequestTiming(ttft, e2e, tpot, itl, n, output.prompt_tokens)


@dataclass(frozen=True)
class CallPhases:
    """One ``generate`` call split at the moment every request had its first token."""

    prefill_s: float
    decode_s: float
    busy_s: float
    prompt_tokens: int
    decode_tokens: int
    output_tokens: int
    requests: int


def call_phases(outputs: Sequence[GenerationOutput]) -> CallPhases:
    """Prefill, decode and busy time of one call, and the tokens each phase produced."""
    if not outputs:
        raise ValueError("a call with no request has no phases")
    start = min(o.start for o in outputs)
    first = max(o.token_times[0] for o in outputs)
    last = max(o.token_times[-1] for o in outputs)
    return CallPhases(
        prefill_s=first - start,
        decode_s=last - first,
        busy_s=last - start,
        prompt_tokens=sum(o.prompt_tokens for o in outputs),
        decode_tokens=sum(len(o.tokens) - 1 for o in outputs),
        output_tokens=sum(len(o.tokens) for o in outputs),
        requests=len(outputs),
    )


def _rate(tokens: int, seconds: float) -> Optional[float]:
    return tokens / seconds if seconds > 0 and tokens > 0 else None


def token_rates(calls: Sequence[CallPhases]) -> dict[str, Optional[float]]:
    """``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``output_tokens_per_s`` and
    ``requests_per_s`` over back-to-back calls (formulas in the module docstring)."""
    busy = sum(c.busy_s for c in calls)
    return {
        "prefill_tokens_per_s": _rate(sum(c.prompt_tokens for c in calls), sum(c.prefill_s for c in calls)),
        "decode_tokens_per_s": _rate(sum(c.decode_tokens for c in calls), sum(c.decode_s for c in calls)),
        "output_tokens_per_s": _rate(sum(c.output_tokens for c in calls), busy),
        "requests_per_s": _rate(sum(c.requests for c in calls), busy),
    }


def summary_ms(values_s: Sequence[float], keep_samples: bool = False) -> Optional[dict[str, Any]]:
    """:func:`harness.stats.summarize` of ``values_s`` in ms, with bootstrap CIs of p50/p90/p99.

    None when there are no values (TPOT and ITL of single-token requests).
    """
    if not values_s:
        return None
    values_ms = [v * 1000.0 for v in values_s]
    out: dict[str, Any] = stats.summarize(values_ms).as_dict()
    for percentile in CI_PERCENTILES:
        out[f"p{percentile}_ci"] = stats.bootstrap_interval(values_ms, percentile).as_dict()
    if keep_samples:
        out["samples"] = [round(v, 6) for v in values_ms]
    return out


def generation_metrics(calls: Sequence[Sequence[GenerationOutput]], keep_samples: bool = True) -> dict[str, Any]:
    """``metrics.generation``: TTFT/TPOT/ITL/e2e summaries and the token rates of measured calls."""
    requests = [request_timing(o) for call in calls for o in call]
    if not requests:
        raise ValueError("no measured request")
    phases = [call_phases(call) for call in calls]
    return {
        "ttft_ms": summary_ms([r.ttft_s for r in requests], keep_samples),
        "tpot_ms": summary_ms([r.tpot_s for r in requests if r.tpot_s is not None], keep_samples),
        "itl_ms": summary_ms([gap for r in requests for gap in r.itl_s], keep_samples),
        "e2e_ms": summary_ms([r.e2e_s for r in requests], keep_samples),
        **token_rates(phases),
        "requests": len(requests),
        "calls": len(phases),
        "prompt_tokens": sum(p.prompt_tokens for p in phases),
        "output_tokens": sum(p.output_tokens for p in phases),
        "busy_s": sum(p.busy_s for p in phases),
    }
