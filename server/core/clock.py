"""The time the batcher reads and waits on, as a small interface, so that its tests run on a
clock they move by hand (tests/batching.py) instead of on sleeps.

Production's clock is time.perf_counter(), the clock of every timestamp in the server (queue
and batch times, the runner's pass reports, the spans made of them); its timers run on the
event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, on a clock that only moves forward."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` on the event loop `delay` seconds from now (at once if <= 0)."""
        ...


class LoopClock:
    """time.perf_counter(), with timers on the running event loop."""

    def now(self) -> float:
        return time.perf_counter()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(delay, 0.0), callback)
