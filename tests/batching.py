"""What the batcher's tests drive it with instead of a model, threads and time: a runner that
records its batches, workers that compute on the event loop when the test lets them, and a
clock the test moves. Everything runs on one event loop, in an order the test decides."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from headserve.plugins.contract import Features, Head, Prepared, Row
from headserve.server.core.runner import BatchRun, Work

T = TypeVar("T")


class NamedHead(Head):
    """A head the fake runner answers for; the batcher never calls its steps."""

    task = "test"

    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self, item: Any, options: Any) -> Prepared:
        raise NotImplementedError

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[Any]:
        raise NotImplementedError

    def finish(self, prepared: Prepared, outputs: Sequence[Any], options: Any) -> Any:
        raise NotImplementedError


HEAD = NamedHead("echo")


_calls = itertools.count(1)


def rows(*lengths: int, head: Head = HEAD) -> list[Work]:
    """A call's work: rows of the given lengths in tokens."""
    token = next(_calls)
    return [Work(head, Row(tuple([token] * n))) for n in lengths]


class FakeRunner:
    """Answers each row with its length, or with the exception `fail` maps its length to."""

    def __init__(self, fail: dict[int, BaseException] | None = None) -> None:
        self.batches: list[list[Work]] = []
        self.fail = fail or {}

    def run(self, work: Sequence[Work]) -> BatchRun:
        self.batches.append(list(work))
        lengths = [len(w.row.input_ids) for w in work]
        return BatchRun([self.fail.get(n, n) for n in lengths], ())

    @property
    def rows_seen(self) -> int:
        return sum(len(b) for b in self.batches)


@dataclass
class HeldWorkers:
    """`count` workers that compute on the event loop, each call once the test releases it
    (or at once when `hold` is off). `calls` names every function they were given."""

    count: int = 1
    hold: bool = True
    calls: list[str] = field(default_factory=list)
    waiting: list[asyncio.Future[None]] = field(default_factory=list)
    closed: bool = False
    background: int = 0  # calls run in the background class

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        if self.hold:
            gate = asyncio.get_running_loop().create_future()
            self.waiting.append(gate)
            await gate
        return fn(*args)

    async def run_background(self, fn: Callable[..., T], *args: object) -> T:
        self.background += 1
        return await self.run(fn, *args)

    def release(self, n: int = 1) -> None:
        """Let the `n` oldest held calls compute."""
        for gate in self.waiting[:n]:
            gate.set_result(None)
        del self.waiting[:n]

    def close(self) -> None:
        self.closed = True


class FakeClock:
    """A clock that moves only when the test says; timers fire on the event loop."""

    def __init__(self, now: float = 1000.0) -> None:
        self.t = now
        self._timers: list[_Timer] = []

    def now(self) -> float:
        return self.t

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.t + delay, callback)
        if delay <= 0:
            timer.fire()
        else:
            self._timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on; timers now due fire in order (their callbacks run soon)."""
        self.t += seconds
        due = sorted((t for t in self._timers if t.due <= self.t), key=lambda t: t.due)
        self._timers = [t for t in self._timers if t.due > self.t]
        for timer in due:
            timer.fire()

    @property
    def pending_timers(self) -> int:
        return sum(not t.cancelled for t in self._timers)


@dataclass
class _Timer:
    due: float
    callback: Callable[[], None]
    cancelled: bool = False

    def fire(self) -> None:
        if not self.cancelled:
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        if not self.cancelled:
            self.callback()

    def cancel(self) -> None:
        self.cancelled = True


async def until(condition: Callable[[], bool], turns: int = 100) -> None:
    """Let the event loop run until `condition` holds; fail after `turns` turns of it.

    No time passes: this only lets the tasks that are ready run (asyncio.sleep(0) yields)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition(), f"not true after {turns} turns of the event loop"


async def idle(turns: int = 20) -> None:
    """Let every ready task run as far as it can go without time passing."""
    for _ in range(turns):
        await asyncio.sleep(0)
