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
