"""Per-step figures of a serving run: throughput, goodput, latency percentiles, verdict.

Definitions (unit-tested with hand-computed numbers in tests/test_serving_figures.py):

- ``duration_s``: from the step's first arrival to the end of its last request;
- ``request_throughput``: finished requests / duration (req/s);
- ``output_tokens_per_s``: output tokens of finished requests / duration;
- ``goodput``: finished requests that meet *every* SLO / duration (req/s), as vLLM's
  ``bench serve --goodput`` counts them: TTFT <= ``slo.ttft_ms`` and TPOT <=
  ``slo.tpot_ms`` (a one-token request has no TPOT and cannot miss it); a failed or
  unfinished request is never good;
- verdict, MLPerf server style: ``VALID`` when no request failed and the
  ``slo.percentile`` (p99) of TTFT and of TPOT are within their bounds; ``INVALID``
  otherwise, with every reason; ``null`` when no SLO is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from harness import stats
from harness.serving.timing import RequestRecord


@dataclass(frozen=True)
class SLO:
    """Service-level objectives in ms (None = not constrained) and the verdict's percentile."""

    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None
    percentile: float = 99.0

    @property
    def set(self) -> bool:
        return self.ttft_ms is not None or self.tpot_ms is not None

    def met_by(self, record: RequestRecord) -> bool:
        """Whether one request meets every objective (the goodput test)."""
        if not record.ok:
            return False
        ttft, tpot = record.ttft_ms, record.tpot_ms
        if self.ttft_ms is not None and (ttft is None or ttft > self.ttft_ms):
            return False
        if self.tpot_ms is not None and tpot is not None and tpot > self.tpot_ms:
            return False
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "percentile": self.percentile}


def duration_s(records: Sequence[RequestRecord], started: float) -> float:
    """Seconds from ``started`` (the first arrival) to the last request's end."""
    ends = [r.ended for r in records if r.ended is not None]
    return max(ends) - started if ends else 0.0


def rate(count: float, seconds: float) -> float:
    """``count / seconds``, 0 for an empty window (a step where nothing finished)."""
    return count / seconds if seconds > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (numpy's default, as in :mod:`harness.stats`); None when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def verdict(records: Sequence[RequestRecord], slo: SLO) -> tuple[Optional[str], str]:
    """(``VALID``/``INVALID``/None, reason) for one step, MLPerf-style on the SLO percentile."""
    if not slo.set:
        return None, "no SLO set (scenario.slo.ttft_ms, scenario.slo.tpot_ms)"
    finished = [r for r in records if r.ok]
    problems, passes = [], []
    failed = len(records) - len(finished)
    if failed:
        problems.append(f"{failed} of {len(records)} requests did not finish")
    if not finished:
        return "INVALID", "; ".join(problems or ["no request finished"])
    p = f"p{slo.percentile:g}"
    for name, bound, values in (
        ("TTFT", slo.ttft_ms, [r.ttft_ms for r in finished if r.ttft_ms is not None]),
        ("TPOT", slo.tpot_ms, [r.tpot_ms for r in finished if r.tpot_ms is not None]),
    ):
        if bound is None:
            continue
        tail = percentile(values, slo.percentile)
        if tail is None:
            if name == "TTFT":
                problems.append("no request produced a first token")
            continue
        if tail > bound:
            problems.append(f"{p} {name} {tail:.1f} ms > {bound:g} ms")
        else:
            passes.append(f"{p} {name} {tail:.1f} ms <= {bound:g} ms")
    if problems:
        return "INVALID", "; ".join(problems)
    return "VALID", "; ".join(passes)


def _summary(values: Sequence[float]) -> Optional[dict[str, Any]]:
    if not values:
        return None
    out: dict[str, Any] = stats.summarize(values).as_dict()
    if len(values) > 1:
        out["p50_ci"] = stats.bootstrap_interval(values, 50).as_dict()
        out["p99_ci"] = stats.bootstrap_interval(values, 99).as_dict()
    return out


def step_figures(records: Sequence[RequestRecord], started: float, slo: SLO, keep_requests: bool = True) -> dict[str, Any]:
    """The record's figures for one step (one load level)."""
    finished = [r for r in records if r.ok]
    seconds = duration_s(records, started)
    good = sum(1 for r in records if slo.met_by(r))
    outcomes = {name: sum(1 for r in records if r.outcome == name) for name in ("ok", "error", "incomplete")}
    valid, reason = verdict(records, slo)
    figures: dict[str, Any] = {
        "requests": {"issued": len(records), "finished": outcomes["ok"], "failed": outcomes["error"], "incomplete": outcomes["incomplete"], "good": good},
        "duration_s": seconds,
        "request_throughput": rate(len(finished), seconds),
        "output_tokens_per_s": rate(sum(r.output_tokens for r in finished), seconds),
        "goodput": rate(good, seconds) if slo.set else None,
        "good_fraction": good / len(records) if records and slo.set else None,
        "ttft_ms": _summary([r.ttft_ms for r in finished if r.ttft_ms is not None]),
        "tpot_ms": _summary([r.tpot_ms for r in finished if r.tpot_ms is not None]),
        "itl_ms": _summary([gap for r in finished for gap in r.itl_ms]),
        "e2e_ms": _summary([r.e2e_ms for r in finished if r.e2e_ms is not None]),
        "schedule_lag_ms": _summary([r.schedule_lag_ms for r in records]),
        "verdict": valid,
        "reason": reason,
    }
    errors = sorted({r.error for r in records if r.error})
    if errors:
        figures["errors"] = errors[:10]
    if keep_requests:
        figures["per_request"] = per_request_arrays(records, started)
    return figures


def per_request_arrays(records: Sequence[RequestRecord], started: float) -> dict[str, list[Any]]:
    """Columnar per-request samples (one entry per request, in issue order)."""

    def ms(value: Optional[float]) -> Optional[float]:
        return None if value is None else round(value, 4)

    arrays: dict[str, list[Any]] = {
        "sent_s": [round(r.sent - started, 6) for r in records],
        "outcome": [r.outcome for r in records],
        "ttft_ms": [ms(r.ttft_ms) for r in records],
        "tpot_ms": [ms(r.tpot_ms) for r in records],
        "e2e_ms": [ms(r.e2e_ms) for r in records],
        "prompt_tokens": [r.prompt_tokens for r in records],
        "output_tokens": [r.output_tokens for r in records],
        "itl_ms": [[round(g, 4) for g in r.itl_ms] for r in records],
    }
    if any(r.server for r in records):  # the server's own per-request timings (llama.cpp's ``timings``)
        arrays["server"] = [r.server or None for r in records]
    return arrays
