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

Rows whose call was cancelled, or whose deadline passed, are dropped before they
reach the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .call_info import BATCH, current_request_id
from .errors import DeadlineExceeded, HeadFailed, InvalidArgument, OutOfMemory, Overloaded
from .memory import release_freed_memory
from .metrics import Metrics
from .runner import BatchRun, PassReport, Runner, Work
from .threads import lower_priority

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_batch_tokens: int = 8192
    max_batch_items: int = 64
    max_wait_ms: float = 5.0
    max_queue_items: int = 4096
    stream_in_flight_items: int = 256
    workers: int | None = None  # batches computed at once; None: planned by threads.py (or 1)
    worker_nice: int = 19  # how much lower the workers' priority is than the event loop's


@dataclass(frozen=True)
class BatchRecord:
    """A batch that carried some of a call's rows: which, where, when (time.perf_counter())."""

    number: int
    worker: str  # the model worker thread's name
    started: float
    ended: float
    passes: tuple[PassReport, ...]


@dataclass(frozen=True)
class Stats:
    queue_ms: float
    inference_ms: float
    arrived: float = 0.0  # when the call's rows entered the queue, on time.perf_counter()
    batches: tuple[BatchRecord, ...] = ()  # in the order they started


@dataclass(eq=False)
class _Pending:
    work: Work
    future: asyncio.Future[Any]
    arrived: float
    deadline: float | None
    request_id: str | None
    length: int = field(init=False)
    started: float = 0.0
    batch: BatchRecord | None = None  # the batch that computed it

    def __post_init__(self) -> None:
        self.length = len(self.work.row.input_ids)


TRIM_AFTER_BATCHES = 20  # a busy spell worth trimming memory after
IDLE_TRIM_SECONDS = 0.5  # idle this long after it: trim


class Scheduler:
    def __init__(self, runner: Runner, limits: Limits, metrics: Metrics | None = None) -> None:
        self.runner = runner
        self.limits = limits
        self.metrics = metrics or Metrics()
        self._pending: list[_Pending] = []
        self.workers = limits.workers or 1
        self._executor = ThreadPoolExecutor(
            self.workers,
            thread_name_prefix="headserve-model",
            initializer=lower_priority,
            initargs=(limits.worker_nice,),
        )
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._computing: set[asyncio.Task[None]] = set()
        self.running = 0  # batches on the model now
        self._last_arrival = 0.0
        self._gap = 1.0  # moving average of seconds between calls
        self._last_batch_rows = limits.max_batch_items
        self._batches_since_trim = 0
        self.metrics.watch(lambda: self.queued, lambda: self.running, self.workers)
        self.metrics.count_oom_splits(lambda: runner.oom_splits)

    # --- the servicers' side ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Rows dropped before the model (cancelled, or past their deadline), so far."""
        return self.metrics.rows_dropped()

    @property
    def busy(self) -> bool:
        return self.running > 0

    def refuse_if_full(self, rows: int) -> None:
        """Overloaded now if `rows` more rows would not fit: checked before any tokenizing,
        so that refusing a call under overload costs next to nothing."""
        if self._event_loop is not None and not self._has_room(rows):
            self.metrics.refused.inc()
            raise Overloaded(
                f"queue full ({self.queued} of {self.limits.max_queue_items} rows waiting); "
                "retry later"
            )

    async def submit(
        self, work: Sequence[Work], *, deadline: float | None = None, wait_for_room: bool = False
    ) -> tuple[list[Any], Stats]:
        """Outputs for `work`, in order. Full queue: Overloaded, or wait (streams)."""
        self._ensure_loop()
        if len(work) > self.limits.max_queue_items:
            raise InvalidArgument(
                "items",
                f"needs {len(work)} rows, more than the queue holds "
                f"({self.limits.max_queue_items}); "
                "split the request",
            )
        if not wait_for_room:
            self.refuse_if_full(len(work))
        elif not self._has_room(len(work)):
            async with self._room:
                await self._room.wait_for(lambda: self._has_room(len(work)))
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        request_id = current_request_id()
        pending = [_Pending(w, loop.create_future(), now, deadline, request_id) for w in work]
        self._gap = 0.8 * self._gap + 0.2 * min(now - self._last_arrival, 1.0)
        self._last_arrival = now
        self._pending.extend(pending)
        self._arrival.set()
        try:
            outputs = await asyncio.gather(*(p.future for p in pending))
        except BaseException:
            for p in pending:
                p.future.cancel()  # not computed yet: dropped; computed: harmless
            raise
        started = min(p.started for p in pending)
        batches = sorted(
            {id(p.batch): p.batch for p in pending if p.batch is not None}.values(),
            key=lambda b: b.started,
        )
        inference = sum(b.ended - b.started for b in batches) * 1e3
        return list(outputs), Stats((started - now) * 1e3, inference, now, tuple(batches))

    def _has_room(self, n: int) -> bool:
        return self.queued + n <= self.limits.max_queue_items

    # --- the batching loop ----------------------------------------------------------------------

    def _ensure_loop(self) -> None:
        """Start the batching loop on the running event loop (once per event loop).

        A server uses one event loop. Tests may call one scheduler from several in turn:
        moving to a new loop stops the old loop's batching loop, and the old loop's batches
        still computing release only the old loop's workers.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._event_loop:  # first call, or a new event loop (tests)
            old_loop, old_task = self._event_loop, self._loop_task
            if old_loop is not None and old_task is not None and not old_loop.is_closed():
                old_loop.call_soon_threadsafe(old_task.cancel)
            self._event_loop = loop
            self._pending = []
            self._arrival = asyncio.Event()
            self._room = asyncio.Condition()
            self._free = asyncio.Semaphore(self.workers)
            self._loop_task = None
            self.running = 0
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._run(self._free))

    async def _run(self, free: asyncio.Semaphore) -> None:
        number = 0
        loop = asyncio.get_running_loop()
        while True:
            await free.acquire()  # a worker is free: fill its batch
            try:
                await self._wait_for_batch()
                batch = self._take_batch() if loop is self._event_loop else []
            except BaseException:
                free.release()
                raise
            if loop is not self._event_loop:  # the scheduler moved to another event loop
                free.release()
                return
            if not batch:
                free.release()
                continue
            number += 1
            task = asyncio.ensure_future(self._compute(batch, number, free))
            self._computing.add(task)
            task.add_done_callback(self._computing.discard)

    async def _compute(self, batch: list[_Pending], number: int, free: asyncio.Semaphore) -> None:
        """Run one batch on a worker and answer its rows; the worker is free again after."""
        self._last_batch_rows = len(batch)
        self._batches_since_trim += 1
        started = time.perf_counter()
        for p in batch:
            p.started = started
        loop = self._event_loop
        self.running += 1
        request_ids = tuple(dict.fromkeys(p.request_id for p in batch if p.request_id))
        try:
            run, computing, cpu, worker = await asyncio.get_running_loop().run_in_executor(
                self._executor, _timed, self.runner.run, [p.work for p in batch], request_ids
            )
        except asyncio.CancelledError:
            for p in batch:
                p.future.cancel()
            raise
        except Exception as exc:  # the executor itself broke: fail this batch, go on
            log.exception("batch of %d rows failed outside the model", len(batch))
            run, computing, cpu, worker = BatchRun([exc] * len(batch), ()), 0.0, 0.0, ""
        finally:
            if loop is self._event_loop:
                self.running -= 1
            free.release()
        record = BatchRecord(number, worker, started, time.perf_counter(), run.passes)
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

    async def _wait_for_batch(self) -> None:
        """Until rows wait and either a batch is full or the oldest has waited max_wait_ms.

        The wait is skipped when calls arrive further apart than max_wait_ms on average:
        then nothing is likely to join the batch, and waiting would only add latency. It
        also ends once as many rows wait as the last batch carried: callers that wait for
        their answers before sending again are all back by then.
        """
        while not self._pending:
            self._arrival.clear()
            if self._batches_since_trim < TRIM_AFTER_BATCHES:
                await self._arrival.wait()
                continue
            try:  # after a busy spell, once idle for a moment: hand its memory back
                await asyncio.wait_for(self._arrival.wait(), IDLE_TRIM_SECONDS)
            except TimeoutError:
                if self.busy:  # another worker still computes: not idle yet
                    continue
                self._batches_since_trim = 0
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, release_freed_memory)
        if self._gap * 1e3 > self.limits.max_wait_ms:
            return
        while not self._full() and len(self._pending) < self._last_batch_rows:
            oldest = min(p.arrived for p in self._pending)
            left = oldest + self.limits.max_wait_ms / 1e3 - time.perf_counter()
            if left <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), left)
            except TimeoutError:
                return

    def _full(self) -> bool:
        if len(self._pending) >= self.limits.max_batch_items:
            return True
        return sum(p.length for p in self._pending) >= self.limits.max_batch_tokens

    def _take_batch(self) -> list[_Pending]:
        now = time.perf_counter()
        live = []
        for p in self._pending:
            if p.future.done():  # its call was cancelled
                self.metrics.dropped.labels("cancelled").inc()
            elif p.deadline is not None and p.deadline <= time.monotonic():
                p.future.set_exception(
                    DeadlineExceeded("deadline passed before the model got to it")
                )
                self.metrics.dropped.labels("deadline").inc()
            else:
                live.append(p)
        if not live:
            self._pending = []
            self._notify_room()
            return []
        choose = oldest_first if self.runner.backbone.packing else choose_batch
        batch = choose(
            [p.length for p in live],
            [now - p.arrived for p in live],
            max_items=self.limits.max_batch_items,
            max_tokens=self.limits.max_batch_tokens,
        )
        chosen = {id(live[i]) for i in batch}
        self._pending = [p for p in live if id(p) not in chosen]
        self._notify_room()
        for i in batch:
            self.metrics.queue_wait.observe(now - live[i].arrived)
        return [live[i] for i in batch]

    def _notify_room(self) -> None:
        async def notify() -> None:
            async with self._room:
                self._room.notify_all()

        asyncio.ensure_future(notify())

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for task in self._computing:
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


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
    batch, tokens = [], 0
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
