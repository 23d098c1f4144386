"""A budget of bytes that work running on threads holds while it runs.

Decoding a small, highly compressible image can take a gigabyte for a moment; several at
once, several gigabytes. So each decode first takes what it may cost from one budget for the
whole server and gives it back only when its thread has finished (a cancelled call's thread
still runs to its end, holding the memory). Work that does not fit waits, in arrival order,
so a large item is not passed over forever by small ones.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ByteBudget:
    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("a byte budget must be at least 1 byte")
        self.total = total
        self.held = 0
        self.peak = 0  # the most ever held at once
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def run(self, cost: int, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a thread, holding `cost` bytes of the budget from before it starts
        until it ends (even when the caller is cancelled meanwhile)."""
        if cost > self.total:
            raise ValueError(f"{cost:,} bytes can never fit in a budget of {self.total:,}")
        await self._take(cost)
        try:
            work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except BaseException:
            self._give(cost)
            raise
        work.add_done_callback(lambda _: self._give(cost))
        return await asyncio.shield(work)

    async def _take(self, cost: int) -> None:
        if not self._waiting and self.held + cost <= self.total:
            self._hold(cost)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (cost, granted)
        self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted, then cancelled
                self._give(cost)
            else:
                self._waiting.remove(entry)
                self._grant()  # it may have been the first in line, holding others back
            raise

    def _hold(self, cost: int) -> None:
        self.held += cost
        self.peak = max(self.peak, self.held)

    def _give(self, cost: int) -> None:
        self.held -= cost
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.held + self._waiting[0][0] <= self.total:
            cost, granted = self._waiting.popleft()
            if not granted.done():
                self._hold(cost)
                granted.set_result(None)
