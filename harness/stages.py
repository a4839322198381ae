"""Where a run's wall time goes: exclusive stage timings across the CLI and the run process.

A measurement of 3 s can cost 20 s of wall time; a user (and a sweep's bill) needs to
see which part of the rest is Python imports, config composition, the spawned process,
the export, the accuracy pass. Every record therefore carries ``metrics.stages``:
seconds per stage, in the order the stages began.

The accounting is *exclusive*: one clock holds a stack of stage names and charges each
moment to exactly one stage (the innermost open one), so stages never overlap and their
sum is the wall time they cover. Unlabelled time lands in the enclosing stage rather
than vanishing. Timestamps come from ``time.monotonic`` (``CLOCK_MONOTONIC``), which on
Linux is one system-wide clock: the parent hands the run process the moment it started
spawning it, the child's clock starts there (``spawn`` covers interpreter start and the
bootstrap imports), and the child's durations plus the moment it finished are merged
back into the parent's clock, so the two processes make one contiguous timeline.

Code anywhere below the runner marks its stages with :func:`timed`; with no clock
running (a library user, a test, a benchmark calling the stages directly) it does
nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Mapping

#: System-wide on Linux, so a timestamp taken in the CLI means the same in the run process.
clock = time.monotonic
#: Decimals kept in a record (0.1 ms).
_DIGITS = 4


class StageClock:
    """Exclusive stage timings: each moment is charged to the innermost open stage."""

    def __init__(self, stage: str, start: float | None = None) -> None:
        self.durations: dict[str, float] = {}
        self._stack = [stage]
        self._since = clock() if start is None else start

    @property
    def current(self) -> str:
        return self._stack[-1]

    @property
    def until(self) -> float:
        """The moment up to which time has been charged."""
        return self._since

    def _charge(self, now: float) -> None:
        spent = now - self._since
        if spent > 0:
            name = self._stack[-1]
            self.durations[name] = self.durations.get(name, 0.0) + spent
            self._since = now

    def switch(self, stage: str) -> None:
        """End the current stage here; ``stage`` takes its place (same nesting level)."""
        self._charge(clock())
        self._stack[-1] = stage

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Charge the block's time to ``name`` (inner blocks take theirs out of it)."""
        self._charge(clock())
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge(clock())
            self._stack.pop()

    def absorb(self, durations: Mapping[str, float], until: float, then: str) -> None:
        """Take over the stages another process timed up to ``until`` (its monotonic end);
        the time since our last charge is theirs, so it is not charged here, and
        ``then`` is the stage from ``until`` on."""
        for name, seconds in durations.items():
            self.durations[name] = self.durations.get(name, 0.0) + max(0.0, float(seconds))
        self._since = max(self._since, until)
        self._stack[-1] = then

    def snapshot(self) -> dict[str, float]:
        """Seconds per stage so far (the current stage charged up to now)."""
        self._charge(clock())
        return {name: round(seconds, _DIGITS) for name, seconds in self.durations.items()}

    def restart(self, stage: str) -> None:
        """Forget the stages so far and start again with ``stage`` (the next job of a sweep)."""
        self.durations = {}
        self._stack = [stage]
        self._since = clock()


_active: StageClock | None = None


def start(stage: str, at: float | None = None) -> StageClock:
    """Make a new clock this process's active one (what :func:`timed` charges)."""
    global _active
    _active = StageClock(stage, at)
    return _active


def active() -> StageClock | None:
    return _active


def stop() -> None:
    """No active clock any more (the end of a run in a reused worker, tests)."""
    global _active
    _active = None


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    """Charge the block to stage ``name`` on the active clock; nothing when none runs."""
    current = _active
    if current is None:
        yield
        return
    with current.stage(name):
        yield


def process_started() -> float | None:
    """This process's start on the :data:`clock` timeline (Linux ``/proc``), else None.

    ``cli_start`` (interpreter start and the CLI's imports) begins here, before any of
    our code runs. The kernel counts the start in clock ticks since boot, which is the
    ``CLOCK_BOOTTIME`` timeline; the difference between that and the monotonic clock is
    time suspended, taken at this moment.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime); fields[0] is field 3
        started_boot = ticks / os.sysconf("SC_CLK_TCK")
        now_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        now = clock()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return now - max(0.0, now_boot - started_boot)


def one_line(durations: Mapping[str, float], limit: int = 6) -> str:
    """``total 9.8 s: measure 3.0 · export 2.1 · spawn 1.6 · ... · 8 others 0.9``:
    the largest stages first, the rest summed."""
    ranked = sorted(durations.items(), key=lambda item: -item[1])
    total = sum(durations.values())
    parts = [f"{name} {seconds:.2f}" for name, seconds in ranked[:limit]]
    rest = ranked[limit:]
    if rest:
        parts.append(f"{len(rest)} others {sum(seconds for _, seconds in rest):.2f}")
    return f"time {total:.2f} s: " + " · ".join(parts)


def summary(durations: Mapping[str, float]) -> dict[str, float]:
    """``wall_s`` (the time the stages cover) and ``outside_window_s`` (all of it but the
    timed ``measure`` loop, present when the run had one): a record's overhead columns."""
    wall = sum(durations.values())
    out = {"wall_s": round(wall, _DIGITS)}
    if "measure" in durations:
        out["outside_window_s"] = round(wall - durations["measure"], _DIGITS)
    return out
