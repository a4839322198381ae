"""Timers: per-device strategies for timing one call that completes on the device.

A backend's session picks its timer (wall clock on the host, CUDA events on a GPU)
so the measurement loop never branches on the device.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol


class Timer(Protocol):
    """Times ``fn(*args)`` and returns ``(result, seconds)``.

    The result must be complete on the device when the timer stops.
    """

    def time(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]: ...


class WallClockTimer:
    """Host wall clock (``perf_counter``): right for backends whose calls block."""

    def time(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        result = fn(*args)
        return result, time.perf_counter() - start


class CudaEventTimer:
    """Times a call with ``torch.cuda.Event`` pairs recorded on a CUDA stream.

    Generic for any CUDA backend: give it the stream the work is enqueued on (None =
    the current stream). The start event is recorded before ``fn``; the end event is
    recorded after it, unless ``fn`` calls :meth:`mark_done` right after enqueueing,
    in which case the end is recorded there, before ``fn`` blocks on the stream. That
    keeps the host's wake-up from a stream sync out of the device time while ``fn``
    still returns only once the work is done (the Session contract).
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self._events: tuple[Any, Any] | None = None
        self._timing = False
        self._marked = False

    def _pair(self) -> tuple[Any, Any]:
        if self._events is None:
            import torch

            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        return self._events

    def mark_done(self) -> None:
        """Record the end event now (no-op outside :meth:`time`)."""
        if self._timing and not self._marked:
            self._pair()[1].record(self.stream)
            self._marked = True

    def time(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        start, end = self._pair()
        self._timing, self._marked = True, False
        start.record(self.stream)
        try:
            result = fn(*args)
        finally:
            self._timing = False
        if not self._marked:
            end.record(self.stream)
        end.synchronize()
        return result, start.elapsed_time(end) / 1000.0
