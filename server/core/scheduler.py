"""Dynamic batching across requests and heads, in front of the one backbone.

Every RPC's rows (of any head) wait in one bounded queue. A single loop forms
batches and hands each to a model worker thread, so the event loop keeps accepting
calls and streaming replies while the model computes; rows that arrive meanwhile
fill the next batch, which starts the moment a worker is free. There are
`workers` of them (one by default): on a CPU, two single-threaded workers computing
two batches at once outrun one worker with two torch threads. The workers run at a
lower priority than the event loop (see threads.py).

A batch is bounded by a token budget, counted as it will be padded (longest row
x rows), and by a row count. It is built around the oldest waiting row (so no row
starves) from the rows closest to it in length (so padding stays small). When
the model is idle and a batch is not full, the loop waits at most `max_wait_ms`
after the oldest row arrived for more to come, unless calls arrive further apart
than that (a lone caller gets no added latency).

Rows whose call is cancelled, or whose deadline passes, leave the queue at once (their
slots free for live calls) and never reach the model.

A long call (more than `long_call_tokens` backbone tokens: a long document's windows, a large
batch) cannot hold the others up. Its rows enter the queue `long_call_tokens` at a time, the
next part when the last is computed, and never share a batch with other calls' rows, which
go first (unless the long call's oldest row has waited a second: it is not starved either).
So a short call waits for at most the long part being computed, not the whole document. And
while other calls keep arriving (one in the last second), long calls' batches take at most
all the workers but one: a short call finds a worker free instead of waiting for a long
batch to end (a batch cannot be interrupted). Held parts count against the queue's room like
queued rows.

Two classes of work share the queue: interactive calls (the default: someone waits for the
answer) and bulk calls (`x-priority: bulk`: a re-index, a batch job). Batches are built from
interactive rows first; bulk rows fill the rest of a batch, and take the workers interactive
rows leave idle. While interactive work is queued or came in the last second, a batch carries
at most `bulk_batch_tokens` tokens of bulk rows (the most an interactive row that arrives
meanwhile waits for is one such batch, as a batch cannot be interrupted), bulk batches take
at most all the workers but one, and they compute in the background class (as long calls'
do). Bulk rows age: one that has waited `BULK_AGE_SECONDS` goes in the next batch, whatever
is queued, so bulk work is never starved. A bulk call takes at most three quarters of the
queue's room: under overload bulk calls are refused (or, streams and jobs, wait) first.

The scheduler runs on one event loop, from `start()` to `stop()`. What it drives is
injected: the runner (a batch of rows -> outputs), the worker threads and the clock, so
that its tests run it on a fake runner, inline workers and a clock moved by hand
(tests/batching.py), with no model and no sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..call_info import BATCH, bulk_share, current_priority, current_request_id
from ..errors import DeadlineExceeded, HeadFailed, InvalidArgument, OutOfMemory, Overloaded
from ..observability.metrics import Metrics
from .clock import Clock, LoopClock, Timer
from .limits import Limits
from .memory import release_freed_memory
from .runner import BatchRun, PassReport, Work, row_key
from .threads import ModelThreads

log = logging.getLogger(__name__)

T = TypeVar("T")


class BatchRunner(Protocol):
    """Computes one batch (synchronously, on a worker thread): per row its output or the
    exception that failed it, and a report of the pass(es)."""

    def run(self, work: Sequence[Work]) -> BatchRun: ...


class Workers(Protocol):
    """Where batches compute: `count` of them at once."""

    count: int

    async def run(self, fn: Callable[..., T], *args: object) -> T: ...

    async def run_background(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` where it takes only what the cores leave (long calls' batches)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BatchRecord:
    """A batch that carried some of a call's rows: which, where, when (on the clock)."""

    number: int
    worker: str  # the model worker thread's name
    started: float
    ended: float
    passes: tuple[PassReport, ...]


@dataclass(frozen=True)
class Stats:
    queue_ms: float
    inference_ms: float
    arrived: float = 0.0  # when the call's rows entered the queue, on the clock
    batches: tuple[BatchRecord, ...] = ()  # in the order they started


@dataclass(eq=False)
class _Pending:
    work: Work
    future: asyncio.Future[Any]
    arrived: float
    request_id: str | None
    length: int = field(init=False)
    started: float = 0.0
    batch: BatchRecord | None = None  # the batch that computed it
    long: bool = False  # a row of a long call
    bulk: bool = False  # a row of a bulk call

    def __post_init__(self) -> None:
        self.length = self.work.row.length


TRIM_AFTER_BATCHES = 20  # a busy spell worth trimming memory after
RECENT_SECONDS = 1.0  # a short call this recent: long calls leave a worker free
BULK_AGE_SECONDS = 2.0  # a bulk row that has waited this long goes in the next batch
IDLE_TRIM_SECONDS = 0.5  # idle this long after it: trim


class Scheduler:
    def __init__(
        self,
        runner: BatchRunner,
        limits: Limits,
        metrics: Metrics | None = None,
        *,
        packed: bool = False,
        clock: Clock | None = None,
        workers: Callable[[], Workers] | None = None,
        on_idle: Callable[[], None] = release_freed_memory,
    ) -> None:
        """`packed`: the runner packs rows (no padding to save by grouping lengths).
        `workers` makes the workers at each start (default: `limits.workers` threads).
        `on_idle` runs on a worker when the server goes idle after a busy spell."""
        self._on_idle = on_idle
        self.runner = runner
        self.limits = limits
        self.metrics = metrics or Metrics()
        self.clock = clock or LoopClock()
        self.workers = limits.workers or 1
        self._make_workers = workers or (lambda: ModelThreads(self.workers, limits.worker_nice))
        self._choose = oldest_first if packed else choose_batch
        self._pending: dict[_Pending, None] = {}  # in arrival order
        self._room_waiters: list[asyncio.Future[None]] = []
        self._wakeup: asyncio.Future[bool] | None = None
        self._started: _Started | None = None
        self.running = 0  # batches on the model now
        self._running_rows = 0  # their rows
        self._last_arrival = 0.0
        self._gap = 1.0  # moving average of seconds between calls
        self._last_batch_rows = limits.max_batch_items
        self._held = 0  # rows of long calls waiting to enter the queue (they count in it)
        self._long_batches = 0  # batches with long or bulk calls' rows computing now
        self._last_interactive = -RECENT_SECONDS  # when the last interactive call arrived
        self._last_short = -RECENT_SECONDS  # when the last call that is not long arrived
        # the requests of the short calls of the last RECENT_SECONDS: when each last came
        self._short_calls: dict[str | None, float] = {}
        self._batches_since_trim = 0
        self.metrics.watch(lambda: self.queued, lambda: self.running, self.workers)

    # --- its life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start batching on the running event loop (the one every call must come from)."""
        if self._started is not None:
            raise RuntimeError("the scheduler is already started")
        workers = self._make_workers()
        free = asyncio.Semaphore(workers.count)  # a permit per idle worker
        self._started = _Started(workers, asyncio.ensure_future(self._batch_loop(free)))

    async def stop(self) -> None:
        """Stop batching: rows still queued or computing are cancelled (their calls too)."""
        started, self._started = self._started, None
        if started is None:
            return
        started.loop.cancel()
        for task in started.computing:
            task.cancel()
        await asyncio.gather(started.loop, *started.computing, return_exceptions=True)
        for p in self._pending:
            p.future.cancel()
        self._pending.clear()
        self._room_freed()
        started.workers.close()
        self.running = self._running_rows = self._long_batches = 0

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def started(self) -> bool:
        return self._started is not None

    # --- the callers' side --------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Rows waiting for the model: in the queue, or parts of long calls held back."""
        return len(self._pending) + self._held

    @property
    def rows_in_flight(self) -> int:
        """Rows queued or on the model now."""
        return self.queued + self._running_rows

    @property
    def waiting_for_room(self) -> int:
        """Calls (streams) waiting for queue space."""
        return len(self._room_waiters)

    @property
    def dropped(self) -> int:
        """Rows dropped before the model (cancelled, or past their deadline), so far."""
        return self.metrics.rows_dropped()

    @property
    def busy(self) -> bool:
        return self.running > 0

    def refuse_if_full(self, rows: int) -> None:
        """Overloaded now if `rows` more rows would not fit: checked before any tokenizing,
        so that refusing a call under overload costs next to nothing. A call that could never
        fit is InvalidArgument: retrying it would be hopeless. A bulk call has three quarters
        of the queue: the rest is kept for interactive calls."""
        bulk = current_priority() == "bulk"
        self._check_fits(rows, bulk)
        if not self._has_room(rows, bulk):
            self.metrics.refused.labels(current_priority()).inc()
            if bulk:
                raise Overloaded(
                    f"queue full for bulk work ({self.queued} rows waiting; bulk calls may "
                    f"fill {self._room(bulk)} of the {self.limits.max_queue_items}); retry later"
                )
            raise Overloaded(
                f"queue full ({self.queued} of {self.limits.max_queue_items} rows waiting); "
                "retry later"
            )

    async def submit(
        self,
        work: Sequence[Work],
        *,
        deadline: float | None = None,
        wait_for_room: bool = False,
        return_exceptions: bool = False,
    ) -> tuple[list[Any], Stats]:
        """Outputs for `work`, in order. Full queue: Overloaded, or wait (streams).

        `deadline` is on the clock; rows still queued then fail with DeadlineExceeded. A row
        that failed raises its exception, or with `return_exceptions` is it, in its place."""
        if self._started is None:
            raise RuntimeError("the scheduler is not started")
        bulk = current_priority() == "bulk"
        if not wait_for_room:
            self.refuse_if_full(len(work))
        else:
            self._check_fits(len(work), bulk)
            await self._wait_for_room(len(work), bulk)
        now = self.clock.now()
        self._gap = 0.8 * self._gap + 0.2 * min(now - self._last_arrival, 1.0)
        self._last_arrival = now
        if not bulk:
            self._last_interactive = now
        if sum(w.row.length for w in work) <= self.limits.long_call_tokens:
            if bulk:
                return await self._queue(work, deadline, return_exceptions, long=False)
            self._last_short = now
            request_id = current_request_id()
            self._short_calls.pop(request_id, None)  # latest last, oldest first
            self._short_calls[request_id] = now
            self._forget_short_calls(now)
            return await self._queue(work, deadline, return_exceptions, long=False)
        parts = _parts(work, self.limits.long_call_tokens)
        outputs: list[Any] = []
        stats: list[Stats] = []
        held = len(work)  # rows of this call not yet in the queue
        self._held += held
        try:
            for part in parts:
                self._held -= len(part)
                held -= len(part)
                got, part_stats = await self._queue(part, deadline, return_exceptions, long=True)
                outputs += got
                stats.append(part_stats)
        finally:
            self._held -= held
            self._room_freed()
        batches = tuple(b for st in stats for b in st.batches)
        inference = sum(st.inference_ms for st in stats)
        return outputs, Stats(stats[0].queue_ms, inference, now, batches)

    async def _queue(
        self, work: Sequence[Work], deadline: float | None, return_exceptions: bool, long: bool
    ) -> tuple[list[Any], Stats]:
        """`work` into the queue (its room already taken), and its outputs once computed."""
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        if deadline is not None and deadline <= now:
            self.metrics.drop("deadline", len(work))
            raise DeadlineExceeded("deadline passed before the model got to it")
        request_id = current_request_id()
        bulk = current_priority() == "bulk"
        pending = [
            _Pending(w, loop.create_future(), now, request_id, long=long, bulk=bulk) for w in work
        ]
        self._pending.update(dict.fromkeys(pending))
        self._wake()
        expiry: Timer | None = None
        if deadline is not None:
            expiry = self.clock.call_later(deadline - now, lambda: self._expire(pending))
        try:
            outputs = await asyncio.gather(
                *(p.future for p in pending), return_exceptions=return_exceptions
            )
        except BaseException:
            for p in pending:  # still queued: leave the queue now; computed: harmless
                self._drop(p, "cancelled")
                p.future.cancel()
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
        started = min(p.started for p in pending)
        batches = sorted(
            {id(p.batch): p.batch for p in pending if p.batch is not None}.values(),
            key=lambda b: b.started,
        )
        inference = sum(b.ended - b.started for b in batches) * 1e3
        return list(outputs), Stats((started - now) * 1e3, inference, now, tuple(batches))

    def _check_fits(self, rows: int, bulk: bool) -> None:
        room = self._room(bulk)
        if rows > room:
            which = "bulk work may fill" if bulk else "the queue holds"
            raise InvalidArgument(
                "items", f"needs {rows} rows, more than {which} ({room}); split the request"
            )

    def _room(self, bulk: bool) -> int:
        """The rows a call of this class may find queued with its own."""
        most = self.limits.max_queue_items
        return bulk_share(most) if bulk else most

    def _has_room(self, n: int, bulk: bool = False) -> bool:
        return self.queued + n <= self._room(bulk)

    async def _wait_for_room(self, n: int, bulk: bool) -> None:
        while not self._has_room(n, bulk):
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)

    def _room_freed(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _drop(self, p: _Pending, reason: str) -> bool:
        """Take a row out of the queue, if it is still there, and count why."""
        if p not in self._pending:
            return False
        del self._pending[p]
        self.metrics.drop(reason)
        self._room_freed()
        return True

    def _expire(self, pending: list[_Pending]) -> None:
        for p in pending:
            if self._drop(p, "deadline") and not p.future.done():
                p.future.set_exception(
                    DeadlineExceeded("deadline passed before the model got to it")
                )

    # --- the batching loop ----------------------------------------------------------------------

    async def _batch_loop(self, free: asyncio.Semaphore) -> None:
        number = 0
        while True:
            await free.acquire()  # a worker is free: fill its batch
            try:
                batch = await self._next_batch()
            except BaseException:
                free.release()
                raise
            started = self._started
            assert started is not None  # stop() cancels this loop before it forgets it
            # workers idle besides the one just taken: a lone batch is shared with them, so
            # one large request alone gets every core (BENCHMARKS.md, "Issue 18")
            idle = self.workers - len(started.computing) - 1
            now = self.clock.now()
            if self._leaves_a_worker(now, batch):
                idle = 0  # a long or bulk batch while others come: their worker stays free
            parts = shares(batch, idle + 1) if idle > 0 and not self._pending else [batch]
            for index, part in enumerate(parts):
                if index:
                    await free.acquire()  # an idle worker's: at once
                number += 1
                self._long_batches += _background(part)  # at once: the next batch (formed
                # before this one's task runs) must see it
                task = asyncio.ensure_future(self._compute(part, number, started.workers, free))
                started.computing.add(task)
                task.add_done_callback(started.computing.discard)

    async def _next_batch(self) -> list[_Pending]:
        """The next batch, once rows wait and either a batch is full or the oldest has
        waited max_wait_ms (see _fill).

        Rows are taken out of the queue here, so a row that is still queued was never seen
        by the model."""
        while True:
            await self._until_rows()
            await self._fill()
            batch = self._take_batch()
            if batch:
                return batch
            if self._pending:  # only long or bulk calls' rows, and they have their workers:
                # wait for a batch to end, a row to arrive, or the other calls to stop
                now = self.clock.now()
                ends = (self._last_short + RECENT_SECONDS, self._last_interactive + RECENT_SECONDS)
                await self._sleep(min((end - now for end in ends if end > now), default=0.01))

    async def _until_rows(self) -> None:
        while not self._pending:
            if self._batches_since_trim < TRIM_AFTER_BATCHES:
                await self._sleep(None)
                continue
            # after a busy spell, once idle for a moment: hand its memory back
            woken = await self._sleep(IDLE_TRIM_SECONDS)
            if woken or self._pending or self.busy:  # not idle yet
                continue
            self._batches_since_trim = 0
            started = self._started
            assert started is not None
            await started.workers.run(self._on_idle)

    async def _fill(self) -> None:
        """Wait for more rows until a batch is full or the oldest row has waited max_wait_ms.

        No wait when calls arrive further apart than max_wait_ms on average: then nothing is
        likely to join the batch, and waiting would only add latency. It also ends once as
        many rows wait as the last batch carried: callers that wait for their answers
        before sending again are all back by then.
        """
        if self._gap * 1e3 > self.limits.max_wait_ms:
            return
        while self._pending and not self._full() and len(self._pending) < self._last_batch_rows:
            oldest = next(iter(self._pending)).arrived
            left = oldest + self.limits.max_wait_ms / 1e3 - self.clock.now()
            if left <= 0:
                return
            await self._sleep(left)

    async def _sleep(self, seconds: float | None) -> bool:
        """Until rows arrive (True), or `seconds` pass (False; None: no limit)."""
        wakeup: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._wakeup = wakeup

        def time_is_up() -> None:
            if not wakeup.done():
                wakeup.set_result(False)

        timer = self.clock.call_later(seconds, time_is_up) if seconds is not None else None
        try:
            return bool(await wakeup)
        finally:
            if timer is not None:
                timer.cancel()
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(True)

    def _full(self) -> bool:
        if len(self._pending) >= self.limits.max_batch_items:
            return True
        return sum(p.length for p in self._pending) >= self.limits.max_batch_tokens

    def _others_came(self, now: float, batch: Sequence[_Pending]) -> bool:
        """Whether a short call came in the last RECENT_SECONDS from another request than the
        long rows of `batch` (a rerank's query is a short call of the documents' request)."""
        if now - self._last_short >= RECENT_SECONDS:
            return False
        self._forget_short_calls(now)
        long = {p.request_id for p in batch if p.long}
        return any(request_id is None or request_id not in long for request_id in self._short_calls)

    def _forget_short_calls(self, now: float) -> None:
        """Drop the short calls no longer recent (the oldest come first)."""
        calls = self._short_calls
        while calls and now - next(iter(calls.values())) >= RECENT_SECONDS:
            del calls[next(iter(calls))]

    def _leave_a_worker(self, now: float, long: Sequence[_Pending]) -> bool:
        """Whether the long calls' rows `long` must wait for a worker, to leave one to the
        short calls: several workers, a short call of another request in the last
        RECENT_SECONDS, and all the workers but one on long calls' batches."""
        return (
            self.workers > 1
            and self._long_batches >= self.workers - 1
            and self._others_came(now, long)
        )

    def _leaves_a_worker(self, now: float, batch: Sequence[_Pending]) -> bool:
        """Whether `batch` must leave the other workers idle: a bulk batch while interactive
        calls come, a long one while short calls of other requests do."""
        if all(p.bulk for p in batch):
            return self._interactive_came(now)
        return _background(batch) and self._others_came(now, batch)

    def _interactive_came(self, now: float) -> bool:
        return now - self._last_interactive < RECENT_SECONDS

    def _bulk_bounded(self, now: float, interactive: Sequence[_Pending]) -> bool:
        """Whether bulk rows get small batches now: interactive rows are queued, or an
        interactive call came in the last RECENT_SECONDS."""
        return bool(interactive) or self._interactive_came(now)

    def _eligible(
        self, interactive: list[_Pending], bulk: list[_Pending], now: float
    ) -> list[_Pending]:
        """The rows the next batch is made of: interactive rows first (`_interactive`),
        unless the oldest bulk row has waited BULK_AGE_SECONDS; bulk rows wait while they
        would take the worker left to interactive calls."""
        rows = self._interactive(interactive, now) if interactive else []
        if not bulk or (rows and now - bulk[0].arrived < BULK_AGE_SECONDS):
            return rows
        if (
            self.workers > 1
            and self._long_batches >= self.workers - 1
            and self._interactive_came(now)
        ):
            return rows  # the last worker is the interactive calls'
        return bulk

    def _interactive(self, live: list[_Pending], now: float) -> list[_Pending]:
        """Of interactive rows, those the next batch is made of: long calls' rows and the
        others never share a batch (a short call would wait for the long rows). The others go
        first, unless the oldest long row has waited RECENT_SECONDS (long calls are not
        starved); long rows wait while they would take the worker left to short calls."""
        short = [p for p in live if not p.long]
        long = [p for p in live if p.long]
        if not long or self._leave_a_worker(now, long):
            return short
        if not short or now - long[0].arrived >= RECENT_SECONDS:
            return long
        return short

    def _take_batch(self) -> list[_Pending]:
        now = self.clock.now()
        for p in [p for p in self._pending if p.future.done()]:
            self._drop(p, "cancelled")  # cancelled a moment ago, its call not yet told
        interactive: list[_Pending] = []  # each oldest first
        bulk: list[_Pending] = []
        for p in self._pending:
            (bulk if p.bulk else interactive).append(p)
        live = self._eligible(interactive, bulk, now)
        if not live:
            return []
        limits = self.limits
        bounded = self._bulk_bounded(now, interactive)
        max_tokens = limits.max_batch_tokens
        if live[0].bulk and bounded:
            max_tokens = min(max_tokens, limits.bulk_batch_tokens)
        chosen = self._choose(
            [p.length for p in live],
            [now - p.arrived for p in live],
            max_items=limits.max_batch_items,
            max_tokens=max_tokens,
        )
        batch = [live[i] for i in chosen]
        if not live[0].bulk and not live[0].long:
            batch += self._bulk_fill(batch, bulk, bounded)
        for p in batch:
            del self._pending[p]
            self.metrics.queue_wait.labels("bulk" if p.bulk else "interactive").observe(
                now - p.arrived
            )
        self._room_freed()
        return batch

    def _bulk_fill(
        self, batch: list[_Pending], bulk: list[_Pending], bounded: bool
    ) -> list[_Pending]:
        """Bulk rows for the rest of an interactive batch, oldest first: while the batch stays
        within its row and token limits (counted as padded unless rows are packed), and, while
        interactive work comes, within `bulk_batch_tokens` of bulk rows."""
        limits = self.limits
        room = limits.max_batch_items - len(batch)
        bulk_tokens = limits.bulk_batch_tokens if bounded else limits.max_batch_tokens
        packed = self._choose is oldest_first
        tokens = sum(p.length for p in batch)
        longest = max(p.length for p in batch)
        fill: list[_Pending] = []
        used = 0
        for p in bulk:
            if len(fill) >= room:
                break
            if p.long or used + p.length > bulk_tokens:
                continue
            rows = len(batch) + len(fill) + 1
            cost = tokens + used + p.length if packed else max(longest, p.length) * rows
            if cost > limits.max_batch_tokens:
                continue
            fill.append(p)
            used += p.length
            longest = max(longest, p.length)
        return fill

    async def _compute(
        self, batch: list[_Pending], number: int, workers: Workers, free: asyncio.Semaphore
    ) -> None:
        """Run one batch on a worker and answer its rows; the worker is free again after."""
        self._last_batch_rows = len(batch)
        self._batches_since_trim += 1
        started = self.clock.now()
        for p in batch:
            p.started = started
        self.running += 1
        self._running_rows += len(batch)
        long = _background(batch)  # counted in _long_batches by the batch loop
        request_ids = tuple(dict.fromkeys(p.request_id for p in batch if p.request_id))
        try:
            on = workers.run_background if long else workers.run
            run, computing, cpu, worker = await on(
                _timed, self.runner.run, [p.work for p in batch], request_ids
            )
        except asyncio.CancelledError:
            for p in batch:
                p.future.cancel()
            raise
        except Exception as exc:  # the executor itself broke: fail this batch, go on
            log.exception("batch of %d rows failed outside the model", len(batch))
            run, computing, cpu, worker = BatchRun([exc] * len(batch), ()), 0.0, 0.0, ""
        finally:
            self.running -= 1
            self._running_rows -= len(batch)
            self._long_batches -= long
            free.release()
            self._wake()  # long rows held back for a worker may take this one
        record = BatchRecord(number, worker, started, self.clock.now(), run.passes)
        self.metrics.batch_done(len(batch), sum(p.length for p in batch), computing, cpu)
        for p, result in zip(batch, run.outputs, strict=True):
            p.batch = record
            if isinstance(result, BaseException):
                self.metrics.failed.labels(_failed_part(result)).inc()
            if p.future.done():
                continue
            if isinstance(result, BaseException):
                p.future.set_exception(result)
            else:
                p.future.set_result(result)


def _background(batch: Sequence[_Pending]) -> bool:
    """A batch of long or bulk calls' rows alone: it computes in the background class."""
    return all(p.long or p.bulk for p in batch)


def _parts(work: Sequence[Work], tokens: int) -> list[Sequence[Work]]:
    """`work` in consecutive parts of at most `tokens` tokens (a row longer alone is a part)."""
    parts: list[Sequence[Work]] = []
    first, total = 0, 0
    for index, w in enumerate(work):
        if index > first and total + w.row.length > tokens:
            parts.append(work[first:index])
            first, total = index, 0
        total += w.row.length
    parts.append(work[first:])
    return parts


def shares(batch: list[_Pending], workers: int) -> list[list[_Pending]]:
    """`batch` dealt to at most `workers` batches of about equal tokens, longest rows first;
    rows equal for the backbone stay together (they are computed once per pass)."""
    groups: dict[object, list[_Pending]] = {}
    for p in batch:
        groups.setdefault(row_key(p.work.row), []).append(p)
    count = min(workers, len(groups))
    if count < 2:
        return [batch]
    parts: list[list[_Pending]] = [[] for _ in range(count)]
    tokens = [0] * count
    for group in sorted(groups.values(), key=lambda g: -g[0].length):
        lightest = tokens.index(min(tokens))
        parts[lightest] += group
        tokens[lightest] += group[0].length
    return parts


@dataclass
class _Started:
    """What one start..stop of the scheduler holds."""

    workers: Workers
    loop: asyncio.Task[None]  # the batching loop
    computing: set[asyncio.Task[None]] = field(default_factory=set)


def _timed(
    run: Callable[[list[Work]], BatchRun], work: list[Work], request_ids: tuple[str, ...]
) -> tuple[BatchRun, float, float, str]:
    """`run(work)` on this (worker) thread, with the wall and thread CPU seconds it took and
    the thread's name. Log lines written meanwhile name the calls' request ids."""
    token = BATCH.set(request_ids)
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        results = run(work)
    finally:
        BATCH.reset(token)
    worker = threading.current_thread().name
    return results, time.perf_counter() - wall, time.thread_time() - cpu, worker


def _failed_part(exc: BaseException) -> str:
    """What a failed row's metric names: the failing head, the backbone, or the executor."""
    if isinstance(exc, HeadFailed):
        return exc.head
    if isinstance(exc, OutOfMemory):
        return "backbone"
    return "executor"


def oldest_first(
    lengths: Sequence[int], waited: Sequence[float], *, max_items: int, max_tokens: int
) -> list[int]:
    """Indices of the next batch when rows are packed (no padding to save by grouping
    lengths): the longest-waiting rows, while their tokens stay within `max_tokens` (the
    first row always goes). A row's wait is then bounded by the rows ahead of it."""
    order = sorted(range(len(lengths)), key=lambda i: -waited[i])
    batch: list[int] = []
    tokens = 0
    for i in order[:max_items]:
        if batch and tokens + lengths[i] > max_tokens:
            break
        batch.append(i)
        tokens += lengths[i]
    return batch


def choose_batch(
    lengths: Sequence[int], waited: Sequence[float], *, max_items: int, max_tokens: int
) -> list[int]:
    """Indices of the next batch: the longest-waiting row plus the rows nearest it in length,
    while rows x longest row stays within `max_tokens` (the first row always goes)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], -waited[i]))
    oldest = max(range(len(lengths)), key=lambda i: waited[i])
    at = order.index(oldest)
    lo, hi = at, at + 1  # the batch is order[lo:hi]
    longest = lengths[oldest]

    def fits(i: int) -> bool:
        return max(longest, lengths[i]) * (hi - lo + 1) <= max_tokens

    while hi - lo < max_items:
        left = order[lo - 1] if lo > 0 and fits(order[lo - 1]) else None
        right = order[hi] if hi < len(order) and fits(order[hi]) else None
        if left is None and right is None:
            break
        # the neighbour closer in length to the oldest row
        if right is None or (
            left is not None and longest - lengths[left] <= lengths[right] - longest
        ):
            lo -= 1
        else:
            longest = max(longest, lengths[order[hi]])
            hi += 1
    return order[lo:hi]
