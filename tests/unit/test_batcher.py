"""The batcher (server/core/scheduler.py) on a fake runner, held workers and a hand-moved clock: which
rows go together, when a batch starts, and what happens to rows nobody waits for any more.
No model, no threads, no sleeps: every step is the test's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from batching import HEAD, FakeClock, FakeRunner, HeldWorkers, NamedHead, idle, rows, until

from headserve.server.core.scheduler import IDLE_TRIM_SECONDS, TRIM_AFTER_BATCHES, Limits, Scheduler
from headserve.server.errors import DeadlineExceeded, HeadFailed, InvalidArgument, Overloaded

MS = 1e-3


class Bench:
    """A started scheduler on fakes, and its fakes."""

    def __init__(self, limits: Limits, *, workers: int = 1, hold: bool = True, **runner: Any):
        self.runner = FakeRunner(**runner)
        self.clock = FakeClock()
        self.workers = HeldWorkers(workers, hold=hold)
        self.scheduler = Scheduler(
            self.runner, limits, clock=self.clock, workers=lambda: self.workers
        )

    def submit(self, *lengths: int, **kwargs: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.scheduler.submit(rows(*lengths), **kwargs))

    def metric(self, name: str, **labels: str) -> float | None:
        return self.scheduler.metrics.registry.get_sample_value(name, labels)

    def computing(self) -> int:
        """Batches handed to the workers and held there."""
        return len(self.workers.waiting)


def run(limits: Limits, test: Callable[[Bench], Awaitable[None]], **kwargs: Any) -> Bench:
    bench = Bench(limits, **kwargs)

    async def main() -> None:
        async with bench.scheduler:
            await test(bench)
        assert bench.workers.closed

    asyncio.run(main())
    return bench


def test_a_lone_caller_waits_for_nobody() -> None:
    async def test(b: Bench) -> None:
        b.clock.advance(5.0)  # the last call was long ago
        call = b.submit(7)
        await until(lambda: b.computing() == 1)  # at once: no time passed
        b.workers.release()
        outputs, stats = await call
        assert outputs == [7] and stats.queue_ms == 0

    run(Limits(max_wait_ms=5), test)


async def busy_spell(b: Bench, calls: int = 30) -> None:
    """Calls 1 ms apart, while the model is busy: afterwards the batcher expects company
    (the gap between calls is well under max_wait_ms), and the last batch was full."""
    blocker = b.submit(3)
    await until(lambda: b.computing() == 1)
    burst = []
    for _ in range(calls):
        b.clock.advance(1 * MS)
        burst.append(b.submit(3))
    while not all(call.done() for call in (blocker, *burst)):
        await until(lambda: b.computing() == 1 or all(c.done() for c in burst))
        b.workers.release()
        await idle()
    await asyncio.gather(blocker, *burst)


def test_calls_close_together_wait_for_each_other_up_to_max_wait() -> None:
    async def test(b: Bench) -> None:
        await busy_spell(b)
        b.clock.advance(1 * MS)
        first = b.submit(3)
        await idle()
        b.clock.advance(4 * MS)
        await idle()
        assert b.computing() == 0 and b.scheduler.queued == 1  # still waiting, 4 of 5 ms
        second = b.submit(4)
        await idle()
        assert b.computing() == 0
        b.clock.advance(1 * MS)  # the oldest row has now waited max_wait_ms
        await until(lambda: b.computing() == 1)
        b.workers.release()
        await asyncio.gather(first, second)
        assert len(b.runner.batches[-1]) == 2

    run(Limits(max_wait_ms=5), test)


def test_a_full_batch_starts_without_waiting() -> None:
    async def test(b: Bench) -> None:
        await busy_spell(b, calls=32)
        assert len(b.runner.batches[-1]) == 4  # full batches
        three = [b.submit(2) for _ in range(3)]
        await idle()
        assert b.computing() == 0  # not full: waits for a fourth, or for max_wait_ms
        three.append(b.submit(2))  # max_batch_items: no wait, no time passed
        await until(lambda: b.computing() == 1)
        b.workers.release()
        await asyncio.gather(*three)
        assert len(b.runner.batches[-1]) == 4

    run(Limits(max_wait_ms=5, max_batch_items=4), test)


def test_cancelled_calls_leave_the_queue_at_once_and_free_their_slots() -> None:
    async def test(b: Bench) -> None:
        model = b.submit(5)  # on the (held) worker
        await until(lambda: b.computing() == 1)
        queued = [b.submit(1, 1) for _ in range(2)]  # the queue holds 4 rows: full
        await until(lambda: b.scheduler.queued == 4)
        with pytest.raises(Overloaded, match="queue full"):
            await b.scheduler.submit(rows(1))
        assert b.metric("headserve_queue_rows") == 4
        for call in queued:
            call.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        assert b.scheduler.queued == 0 and b.metric("headserve_queue_rows") == 0
        fresh = b.submit(1, 1, 1, 1)  # the whole queue again: accepted
        await until(lambda: b.scheduler.queued == 4)
        b.workers.release()
        await until(lambda: b.computing() == 1)
        b.workers.release()
        (outputs, _), _ = await asyncio.gather(fresh, model)
        assert outputs == [1, 1, 1, 1]

    b = run(Limits(max_queue_items=4, max_wait_ms=0), test)
    assert b.runner.rows_seen == 5  # the cancelled rows never reached the model
    assert b.metric("headserve_rows_dropped_total", reason="cancelled") == 4
    assert b.metric("headserve_calls_refused_total", priority="interactive") == 1


def test_a_call_past_its_deadline_leaves_the_queue_when_it_passes() -> None:
    async def test(b: Bench) -> None:
        model = b.submit(5)
        await until(lambda: b.computing() == 1)
        late = b.submit(1, 1, 1, deadline=b.clock.now() + 0.05)
        wanted = b.submit(2)
        await until(lambda: b.scheduler.queued == 4)
        b.clock.advance(0.049)
        await idle()
        assert b.scheduler.queued == 4 and not late.done()
        b.clock.advance(0.001)
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await late
        assert b.scheduler.queued == 1  # at once, while the model is still busy
        b.workers.release()
        await until(lambda: b.computing() == 1)
        b.workers.release()
        (outputs, stats), _ = await asyncio.gather(wanted, model)
        assert outputs == [2] and stats.queue_ms == pytest.approx(50)
        # already past it on arrival: refused before it is queued
        with pytest.raises(DeadlineExceeded):
            await b.scheduler.submit(rows(1, 1), deadline=b.clock.now())
        assert b.clock.pending_timers == 0  # answered calls leave no timer behind

    b = run(Limits(max_wait_ms=0), test)
    assert b.runner.rows_seen == 2
    assert b.metric("headserve_rows_dropped_total", reason="deadline") == 5


def test_a_call_that_can_never_fit_is_invalid_not_overloaded() -> None:
    """More rows than the whole queue holds: no retry can help, so not RESOURCE_EXHAUSTED."""

    async def test(b: Bench) -> None:
        for check in (
            lambda: b.scheduler.refuse_if_full(5),  # what the core asks before tokenizing
            lambda: b.scheduler.submit(rows(1, 1, 1, 1, 1)),
            lambda: b.scheduler.submit(rows(1, 1, 1, 1, 1), wait_for_room=True),
        ):
            with pytest.raises(InvalidArgument, match=r"needs 5 rows, more than the queue"):
                result = check()
                if asyncio.iscoroutine(result):
                    await result
        assert b.metric("headserve_calls_refused_total", priority="interactive") == 0

    run(Limits(max_queue_items=4), test)


def test_a_stream_waits_for_room_instead_of_being_refused() -> None:
    async def test(b: Bench) -> None:
        model = b.submit(5)
        await until(lambda: b.computing() == 1)
        full = b.submit(1, 1)
        await until(lambda: b.scheduler.queued == 2)
        streamed = b.submit(3, wait_for_room=True)
        await until(lambda: b.scheduler.waiting_for_room == 1)
        assert b.scheduler.queued == 2
        b.workers.release()  # the worker takes the queued rows: room
        await until(lambda: b.scheduler.waiting_for_room == 0 and b.computing() == 1)
        b.workers.release()
        await until(lambda: b.computing() == 1)
        b.workers.release()
        (outputs, _), _, _ = await asyncio.gather(streamed, full, model)
        assert outputs == [3]

    run(Limits(max_queue_items=2, max_wait_ms=0), test)


def test_each_worker_computes_its_own_batch() -> None:
    async def test(b: Bench) -> None:
        first, second = b.submit(1), b.submit(2)
        await until(lambda: b.computing() == 2)  # two batches on the model at once
        assert b.scheduler.running == 2 and b.metric("headserve_batches_running") == 2
        third = b.submit(3)
        await idle()
        assert b.scheduler.queued == 1  # both workers busy: it waits
        b.workers.release()
        await until(lambda: b.computing() == 2 and b.scheduler.queued == 0)
        b.workers.release(2)
        results = await asyncio.gather(first, second, third)
        assert [outputs for outputs, _ in results] == [[1], [2], [3]]

    b = run(Limits(max_wait_ms=0, max_batch_items=1, workers=2), test, workers=2)
    assert [len(batch) for batch in b.runner.batches] == [1, 1, 1]


def test_a_failed_row_fails_its_call_and_the_next_batch_runs() -> None:
    failure = HeadFailed("head 'bad' failed: boom", head="bad")

    async def test(b: Bench) -> None:
        good = asyncio.ensure_future(b.scheduler.submit(rows(2)))
        bad = asyncio.ensure_future(b.scheduler.submit(rows(9, head=NamedHead("bad"))))
        with pytest.raises(HeadFailed, match="'bad'"):
            await bad
        (output,), _ = await good
        assert output == 2
        again, _ = await b.scheduler.submit(rows(4))
        assert again == [4]

    b = run(Limits(max_wait_ms=0), test, hold=False, fail={9: failure})
    assert b.metric("headserve_rows_failed_total", head="bad") == 1
    assert b.metric("headserve_rows_failed_total", head=HEAD.name) is None


def test_stop_cancels_what_waits_and_a_stopped_scheduler_takes_nothing() -> None:
    bench = Bench(Limits(max_wait_ms=0))

    async def main() -> None:
        with pytest.raises(RuntimeError, match="not started"):
            await bench.scheduler.submit(rows(1))
        await bench.scheduler.start()
        computing = bench.submit(1)
        await until(lambda: bench.computing() == 1)
        queued = bench.submit(2)
        await until(lambda: bench.scheduler.queued == 1)
        await bench.scheduler.stop()
        for call in (computing, queued):
            with pytest.raises(asyncio.CancelledError):
                await call
        assert bench.scheduler.queued == 0 and bench.workers.closed
        with pytest.raises(RuntimeError, match="not started"):
            await bench.scheduler.submit(rows(1))

    asyncio.run(main())


def test_memory_is_trimmed_once_idle_after_a_busy_spell() -> None:
    async def test(b: Bench) -> None:
        for _ in range(TRIM_AFTER_BATCHES):
            await b.scheduler.submit(rows(1))
        await idle()
        assert "release_freed_memory" not in b.workers.calls  # not yet idle long enough
        b.clock.advance(IDLE_TRIM_SECONDS / 2)
        await b.scheduler.submit(rows(1))  # a call meanwhile: the idle time starts again
        await idle()
        b.clock.advance(IDLE_TRIM_SECONDS * 0.9)
        await idle()
        assert "release_freed_memory" not in b.workers.calls
        b.clock.advance(IDLE_TRIM_SECONDS * 0.1)
        await until(lambda: "release_freed_memory" in b.workers.calls)
        assert b.workers.calls.count("_timed") == TRIM_AFTER_BATCHES + 1

    run(Limits(max_wait_ms=0), test, hold=False)


def test_a_lone_batch_is_shared_with_the_idle_workers() -> None:
    """One call of six rows and two idle workers: two batches of about equal tokens run at
    once (a lone large request gets every core), the longest rows dealt first."""

    async def test(b: Bench) -> None:
        call = b.submit(9, 1, 8, 2, 7, 3)
        await until(lambda: b.computing() == 2)
        assert b.scheduler.running == 2
        b.workers.release(2)
        outputs, _ = await call
        assert outputs == [9, 1, 8, 2, 7, 3]  # answered in the call's order

    b = run(Limits(max_wait_ms=0, workers=2), test, workers=2)
    lengths = sorted(sorted(len(w.row.input_ids) for w in batch) for batch in b.runner.batches)
    assert lengths == [[1, 2, 3, 9], [7, 8]]  # 15 tokens each


def test_a_batch_is_not_split_while_other_rows_wait_for_the_other_worker() -> None:
    async def test(b: Bench) -> None:
        first = b.submit(5)  # takes worker 1 (held)
        await until(lambda: b.computing() == 1)
        second = b.submit(4, 4, 4)
        await until(lambda: b.computing() == 2)  # worker 2: the three rows together
        b.workers.release(2)
        await asyncio.gather(first, second)

    b = run(Limits(max_wait_ms=0, workers=2), test, workers=2)
    assert [len(batch) for batch in b.runner.batches] == [1, 3]


def test_a_long_calls_rows_queue_a_part_at_a_time_behind_calls_that_came_meanwhile() -> None:
    """A document of eight 10-token windows, long_call_tokens 20: its rows enter the queue two
    at a time. A short call arriving while the first part computes is the next batch, not
    the ninth."""

    async def test(b: Bench) -> None:
        document = b.submit(*[10] * 8)
        await until(lambda: b.computing() == 1)
        assert b.scheduler.queued == 6  # held back, but counted against the queue
        short = b.submit(3)
        await idle()
        b.workers.release()  # the document's first part
        await until(lambda: b.computing() == 1)
        b.workers.release()  # the short call's batch, before the document's second part
        (outputs, _) = await short
        assert outputs == [3]
        while not document.done():
            await until(lambda: b.computing() == 1 or document.done())
            b.workers.release()
            await idle()
        outputs, stats = await document
        assert outputs == [10] * 8 and len(stats.batches) == 4

    b = run(Limits(max_wait_ms=0, long_call_tokens=20), test)
    assert [[len(w.row.input_ids) for w in batch] for batch in b.runner.batches] == [
        [10, 10], [3], [10, 10], [10, 10], [10, 10],
    ]  # fmt: skip


def test_held_parts_count_against_the_queue() -> None:
    async def test(b: Bench) -> None:
        document = b.submit(*[10] * 6)
        await until(lambda: b.computing() == 1)
        with pytest.raises(Overloaded):
            await b.submit(1, 1, 1)  # 4 of 6 rows held, 2 computing: room for 2 only
        b.workers.hold = False
        b.workers.release()
        await document

    run(Limits(max_wait_ms=0, long_call_tokens=20, max_queue_items=6), test)


def test_while_short_calls_come_long_calls_leave_them_a_worker() -> None:
    """Two workers, a short call a moment ago, two long calls queued: one long batch
    computes, the other waits, and the next short call takes the free worker at once."""

    async def test(b: Bench) -> None:
        warm = b.submit(2)
        await until(lambda: b.computing() == 1)
        b.workers.release()
        await warm
        first, second = b.submit(*[10] * 4), b.submit(*[10] * 4)
        await until(lambda: b.computing() == 1)
        await idle()
        assert b.computing() == 1 and len(b.scheduler._pending) == 2  # the other long part waits
        short = b.submit(3)
        await until(lambda: b.computing() == 2)  # the free worker: the short call's
        b.workers.release(2)
        assert (await short)[0] == [3]
        b.clock.advance(2.0)  # no short call for two seconds: both workers for long calls
        await until(lambda: b.computing() == 2)
        b.workers.hold = False
        b.workers.release(2)
        await asyncio.gather(first, second)

    limits = Limits(max_wait_ms=0, long_call_tokens=20, max_batch_tokens=20, workers=2)
    run(limits, test, workers=2)


def test_short_rows_never_share_a_batch_with_long_ones_and_long_ones_are_not_starved() -> None:
    """A long part and a short call wait together: the short call goes first, in a batch of
    its own; once the long part has waited a second, it goes before newer short calls."""

    async def test(b: Bench) -> None:
        blocker = b.submit(5)
        await until(lambda: b.computing() == 1)
        document = b.submit(*[10] * 4)
        first = b.submit(3)
        await idle()
        b.workers.release()  # the blocker; next: the short call alone, not with the document
        await until(lambda: b.computing() == 1)
        second = b.submit(2)
        b.clock.advance(1.5)
        b.workers.release()  # the document's part has now waited 1.5 s: before `second`
        await until(lambda: b.computing() == 1)
        b.workers.hold = False
        b.workers.release()
        await asyncio.gather(blocker, document, first, second)

    b = run(Limits(max_wait_ms=0, long_call_tokens=20), test)
    assert [[len(w.row.input_ids) for w in batch] for batch in b.runner.batches] == [
        [5], [3], [10, 10], [2], [10, 10],
    ]  # fmt: skip


def test_a_rerank_s_own_query_does_not_keep_its_documents_to_one_worker() -> None:
    """A short call of the same request as a long one (a rerank's query, beside its
    documents) is not other traffic: the long call may take every worker."""
    from headserve.server.call_info import CURRENT, CallInfo

    async def call(request_id: str, *lengths: int) -> Any:
        CURRENT.set(CallInfo(request_id, "test"))  # this task's own context
        return await b.scheduler.submit(rows(*lengths))

    async def test(bench: Bench) -> None:
        query = asyncio.ensure_future(call("rerank-1", 3))
        await until(lambda: bench.computing() == 1)
        bench.workers.release()
        await query
        first, second = (
            asyncio.ensure_future(call("rerank-1", *[10] * 2)),
            asyncio.ensure_future(call("rerank-1", *[10] * 2)),
        )
        await until(lambda: bench.computing() == 2)  # both workers: no one else is waiting
        bench.workers.hold = False
        bench.workers.release(2)
        await asyncio.gather(first, second)

    limits = Limits(max_wait_ms=0, long_call_tokens=10, max_batch_tokens=20, workers=2)
    b = Bench(limits, workers=2)

    async def main() -> None:
        async with b.scheduler:
            await test(b)

    asyncio.run(main())


def _bulk(b: Bench, *lengths: int, **kwargs: Any) -> asyncio.Future[Any]:
    """A bulk call's rows (`x-priority: bulk`), submitted from a task of its own."""
    from headserve.server.call_info import PRIORITY

    async def call() -> Any:
        PRIORITY.set("bulk")  # this task's own context
        return await b.scheduler.submit(rows(*lengths), **kwargs)

    return asyncio.ensure_future(call())


def _lengths(b: Bench) -> list[list[int]]:
    return [[len(w.row.input_ids) for w in batch] for batch in b.runner.batches]


def test_interactive_rows_go_first_and_bulk_rows_fill_the_rest_in_small_batches() -> None:
    """Bulk rows queued before an interactive call: the interactive rows go first, bulk rows
    fill their batch up to bulk_batch_tokens; while interactive work is recent, bulk batches
    stay within it (and compute in the background class); once it is not, they are full."""

    async def test(b: Bench) -> None:
        blocker = b.submit(5)
        await until(lambda: b.computing() == 1)
        corpus = _bulk(b, *[10] * 10)
        await idle()
        live = b.submit(3, 3)
        await idle()
        b.workers.release()  # the blocker; next: the live rows, and 20 bulk tokens
        await until(lambda: b.computing() == 1)
        assert (await asyncio.wait_for(asyncio.shield(blocker), 1))[0] == [5]
        b.workers.release()
        assert (await live)[0] == [3, 3]
        await until(lambda: b.computing() == 1)  # a bulk batch, small: interactive work came
        b.workers.release()  # less than 1 s ago; and the next, too
        await until(lambda: b.computing() == 1)
        b.clock.advance(1.5)  # no interactive call since: bulk batches are full again
        b.workers.hold = False
        b.workers.release()
        await corpus

    b = run(Limits(max_wait_ms=0, bulk_batch_tokens=20, max_batch_tokens=80), test)
    assert _lengths(b) == [[5], [3, 3, 10, 10], [10, 10], [10, 10], [10, 10, 10, 10]]
    assert b.workers.background == 3  # the bulk batches alone; the mixed one is interactive


def test_bulk_rows_are_not_starved() -> None:
    """Interactive calls keep coming; a bulk row that has waited BULK_AGE_SECONDS goes in the
    next batch before them."""
    from headserve.server.core.scheduler import BULK_AGE_SECONDS

    async def test(b: Bench) -> None:
        blocker = b.submit(5)
        await until(lambda: b.computing() == 1)
        corpus = _bulk(b, 40)  # alone over bulk_batch_tokens: no interactive batch takes it
        calls = [blocker]
        for _ in range(3):
            calls.append(b.submit(4))
            await idle()
            b.workers.release()  # the oldest interactive call goes
            await until(lambda: b.computing() == 1)
            b.clock.advance(BULK_AGE_SECONDS / 2.5)
        calls.append(b.submit(4))
        await idle()
        b.workers.release()  # the bulk row has now waited 2.4 s: it goes before the last call
        await until(lambda: b.computing() == 1)
        b.workers.hold = False
        b.workers.release()
        await asyncio.gather(corpus, *calls)

    b = run(Limits(max_wait_ms=0, bulk_batch_tokens=20), test)
    assert _lengths(b) == [[5], [4], [4], [4], [40], [4]]


def test_bulk_batches_leave_a_worker_to_interactive_calls() -> None:
    """Two workers, interactive calls recent: a bulk call takes one worker and leaves the other
    idle for them; with no interactive call for a second, it takes both."""

    async def test(b: Bench) -> None:
        warm = b.submit(2)  # an interactive call now
        await until(lambda: b.computing() == 1)
        b.workers.release()
        await warm
        corpus = _bulk(b, *[10] * 10)
        await until(lambda: b.computing() == 1)
        await idle()
        assert b.computing() == 1  # the other worker waits for interactive calls
        live = b.submit(3)
        await until(lambda: b.computing() == 2)  # at once, on the free worker (with two
        b.workers.release(2)  # bulk rows to fill its batch)
        assert (await live)[0] == [3]
        b.clock.advance(1.5)
        await until(lambda: b.computing() == 2)  # no interactive call for 1.5 s: both
        b.workers.hold = False
        b.workers.release(2)
        await corpus

    run(Limits(max_wait_ms=0, bulk_batch_tokens=20, workers=2), test, workers=2)


def test_under_overload_bulk_calls_are_refused_first() -> None:
    """Bulk calls may fill three quarters of the queue; the rest is interactive calls' room."""

    async def test(b: Bench) -> None:
        blocker = b.submit(5)
        await until(lambda: b.computing() == 1)
        queued = _bulk(b, *[1] * 5)
        await idle()
        with pytest.raises(Overloaded, match="queue full for bulk work"):
            await _bulk(b, 1, 1)
        with pytest.raises(InvalidArgument, match="more than bulk work may fill \\(6\\)"):
            await _bulk(b, *[1] * 7)
        live = b.submit(1, 1, 1)  # fits: 8 of 8
        await idle()
        b.workers.hold = False
        b.workers.release()
        await asyncio.gather(blocker, queued, live)

    b = run(Limits(max_wait_ms=0, max_queue_items=8), test)
    assert b.metric("headserve_calls_refused_total", priority="bulk") == 1
    assert b.metric("headserve_calls_refused_total", priority="interactive") == 0
