"""How this process's cores are split between model workers and torch's threads.

torch's intra-op threads meet at a barrier after every operator, so when the event
loop (gRPC, tokenizing, replies) takes one of their cores for a moment, all of them
wait for it. Several workers, each computing its own batch on fewer threads, lose
only the stolen time. Measured on this machine's 2 cores (`bench/ceiling.py`, see
BENCHMARKS.md): two workers of one thread each ran the backbone faster than one
worker with two threads at every batch size, a lone sentence included.

So on a CPU the default is one worker per core, at most four, each with an equal
share of the cores as torch threads; on an accelerator, one worker feeds the device
with every core. Either number can be set; the other follows from it.

The workers also run at a lower priority than the event loop (nice +19 by default, the
lowest): when the cores are busy, taking, refusing and answering calls comes first and
the model takes what is left. Measured at ten times the sustainable rate
(`bench/overload.py`): at the same priority refusals took 940 ms at the median and gRPC
cancelled calls; at +10, 3-12 ms (p99 51-125 ms); at +19, 1.3-2.4 ms (p99 34-74 ms), with
the same accepted throughput.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CPU_WORKERS = 4


@dataclass(frozen=True)
class ThreadPlan:
    workers: int  # batches computed at once
    threads: int  # torch intra-op threads of each


def cores() -> int:
    return len(os.sched_getaffinity(0))


def plan(
    device: torch.device, workers: int | None = None, threads: int | None = None
) -> ThreadPlan:
    available = cores()
    if workers is None:
        if device.type != "cpu":
            workers = 1
        elif threads is not None:
            workers = max(1, available // threads)
        else:
            workers = max(1, min(available, MAX_CPU_WORKERS))
    if threads is None:
        threads = max(1, available // workers)
    return ThreadPlan(workers, threads)


def set_torch_threads(threads: int | None) -> int:
    """torch's intra-op threads for every thread of this process (one per core by default).

    Worker threads take the count when they first run an operator. Inter-op threads stay
    at one: the workers are the only parallelism above the operators.
    """
    count = threads or cores()
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    return count


def lower_priority(nice: int) -> None:
    """Lower the calling thread's priority by `nice` (Linux: nice is per thread, and the
    threads it starts, such as torch's, inherit it). Elsewhere, and for 0, nothing."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(
            os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice)
        )
    except OSError as exc:  # a sandbox may forbid it: run at the same priority
        log.warning("could not lower the model worker's priority: %s", exc)


def idle_priority(nice: int) -> None:
    """The calling thread at `nice`, and on Linux in the SCHED_IDLE class: it runs only on a
    core no other thread wants, so the event loop and the other workers' batches always come
    first. A thread cannot leave the class unprivileged: only threads that stay in it go."""
    lower_priority(nice)
    if not sys.platform.startswith("linux"):
        return
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # a sandbox may forbid it: run at the workers' priority
        log.warning("could not put the background worker in the idle class: %s", exc)


BULK_NICE = 19  # bulk calls' own work (tokenizing, finishing): as low as the model workers


class _BulkThreads:
    """Where bulk calls prepare and finish their items: threads at the lowest priority, so
    that on busy cores the event loop and interactive calls come first (the rows' batches
    already compute in the background class: scheduler.py). Made on first use."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on one of the threads, in the caller's context (its call)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    cores(),
                    thread_name_prefix="headserve-bulk",
                    initializer=lower_priority,
                    initargs=(BULK_NICE,),
                )
            pool = self._pool
        run = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(pool, run)


bulk_threads = _BulkThreads()


class ModelThreads:
    """The model workers: `count` threads below the event loop's priority (by `nice`), and
    as many background threads in the idle class (idle_priority) for long calls' batches.
    The scheduler never has more than `count` batches computing, of either kind."""

    def __init__(self, count: int, nice: int) -> None:
        self.count = count
        self._pool = ThreadPoolExecutor(
            count,
            thread_name_prefix="headserve-model",
            initializer=lower_priority,
            initargs=(nice,),
        )
        self._background = ThreadPoolExecutor(
            count,
            thread_name_prefix="headserve-model-long",
            initializer=idle_priority,
            initargs=(nice,),
        )

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a free worker thread (or once one is free)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run_background(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a background thread: the cores' leftovers."""
        return await asyncio.get_running_loop().run_in_executor(self._background, fn, *args)

    def close(self) -> None:
        """No new work; what a thread computes now finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._background.shutdown(wait=False, cancel_futures=True)
