"""SIGINT and SIGTERM, handled alike: stop the sweep, keep what was measured.

Slurm (``scancel``, a time limit), CI runners and ``kill`` send SIGTERM; a terminal
sends SIGINT. Left to Python's defaults, SIGTERM ends the CLI on the spot: no record
for the running job, no summary, a stale ledger folder. So the CLI turns either
signal into :class:`harness.errors.Interrupted` (a ``KeyboardInterrupt``): the
launcher kills the run process and hands back its record with status
``interrupted``, the CLI writes it, prints the sweep summary once, removes its ledger
and exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM). Re-running the same
command finishes the rest (sweeps skip jobs whose ``ok`` record exists).

A second signal while that clean-up runs means "now": the CLI exits at once.
A signal the CLI was started with ignored (``nohup``, a background job of a
non-interactive shell) stays ignored.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Optional

from harness.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def install() -> None:
    """Route SIGINT and SIGTERM to :func:`_handler` (main thread only, as Python requires)."""
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)


def received() -> Optional[int]:
    """The first signal received, if any."""
    return _received[0] if _received else None


def _handler(signum: int, frame: Optional[FrameType]) -> None:
    if _received:
        name = signal.Signals(signum).name
        try:
            sys.stderr.write(f"harness: {name} again: exiting now, without the summary\n")
            sys.stderr.flush()
        finally:
            os._exit(128 + signum)
    _received.append(signum)
    raise Interrupted(signum)
