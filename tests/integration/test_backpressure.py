"""The queue seen through gRPC, with the model held or failing (tests/faults.py): a full queue
refuses unary calls and makes streams wait, calls that went away free their slots at once, late
calls are never computed, and a failed or out-of-memory batch fails only its own calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from faults import faults, held
from serving import ServerThread

from headserve.client import (
    AsyncClient,
    Batch,
    Client,
    DeadlineExceededError,
    InternalError,
    ResourceExhaustedError,
)
from headserve.plugins.contract import HeadSpec
from headserve.server.core.scheduler import Limits, Scheduler
from headserve.server.loading import Settings


def _settings(bert, **limits: Any) -> Settings:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("sentiment", "classify", bert.classify),
    )
    return Settings(model_dir=bert.backbone, heads=heads, device="cpu", limits=Limits(**limits))


def _metric(scheduler: Scheduler, name: str, **labels: str) -> float | None:
    return scheduler.metrics.registry.get_sample_value(name, labels)


async def _eventually(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not true within {seconds} s"
        await asyncio.sleep(0.005)


async def _fill(client: AsyncClient, scheduler: Scheduler) -> tuple[Any, list[Any]]:
    """One call on the (held) model, then four that fill the small queue."""
    first = asyncio.ensure_future(client.encode(["held by the model"]))
    await _eventually(lambda: scheduler.busy)
    queued = [asyncio.ensure_future(client.encode([f"queued {i}"])) for i in range(4)]
    await _eventually(lambda: scheduler.queued == 4)
    return first, queued


@pytest.fixture
def small_queue(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = ServerThread(
        _settings(  # one worker: the held batch holds the whole model
            bert,
            max_queue_items=4,
            max_batch_items=1,
            stream_in_flight_items=2,
            max_wait_ms=1,
            workers=1,
        )
    )
    yield thread
    thread.stop()


def test_full_queue_refuses_unary_calls_and_streams_wait(small_queue: ServerThread) -> None:
    assert small_queue.core is not None
    scheduler = small_queue.core.scheduler

    async def main(gate: threading.Event) -> None:
        async with AsyncClient(small_queue.target, max_retries=0, timeout=30) as client:
            first, queued = await _fill(client, scheduler)
            with pytest.raises(ResourceExhaustedError, match="queue full") as refused:
                await client.encode(["one too many"])
            assert refused.value.reason == "OVERLOADED"
            # refused, not queued: the queue is as it was
            assert _metric(scheduler, "headserve_calls_refused_total", priority="interactive") == 1
            assert _metric(scheduler, "headserve_queue_rows") == 4
            assert _metric(scheduler, "headserve_batches_running") == 1

            batches = [Batch([f"streamed {i}"], id=str(i)) for i in range(10)]
            results: list[Any] = []

            async def consume() -> None:
                async for r in client.encode_stream(batches):
                    results.append(r)

            streaming = asyncio.ensure_future(consume())
            # its first two requests (its in-flight cap) wait for room: not refused
            await _eventually(lambda: scheduler.waiting_for_room == 2)
            assert scheduler.queued == 4 and not results
            gate.set()
            await asyncio.gather(first, *queued, streaming)
            assert [r.id for r in results] == [str(i) for i in range(10)]
            assert all(r.error is None for r in results)

    with held(small_queue.core.runner) as gate:
        asyncio.run(main(gate))


def test_calls_that_went_away_free_the_queue_at_once(small_queue: ServerThread) -> None:
    assert small_queue.core is not None
    scheduler = small_queue.core.scheduler

    async def main(gate: threading.Event) -> None:
        async with AsyncClient(small_queue.target, max_retries=0, timeout=30) as client:
            first, queued = await _fill(client, scheduler)
            for call in queued:
                call.cancel()
            await asyncio.gather(*queued, return_exceptions=True)
            # the server hears of it and the rows leave, while the model is still held
            await _eventually(lambda: scheduler.queued == 0)
            assert _metric(scheduler, "headserve_queue_rows") == 0
            fresh = asyncio.ensure_future(client.encode(["accepted", "at", "once", "too"]))
            await _eventually(lambda: scheduler.queued == 4 or fresh.done())
            assert not fresh.done()  # queued, not refused
            gate.set()
            assert len(await fresh) == 4
            await first

    before = small_queue.core.runner.rows_computed
    with held(small_queue.core.runner) as gate:
        asyncio.run(main(gate))
    assert small_queue.core.runner.rows_computed - before == 5  # none of the cancelled rows
    assert _metric(scheduler, "headserve_rows_dropped_total", reason="cancelled") == 4
    assert _metric(scheduler, "headserve_calls_refused_total", priority="interactive") == 0


def test_a_call_past_its_deadline_is_not_computed(small_queue: ServerThread) -> None:
    assert small_queue.core is not None
    runner = small_queue.core.runner
    with held(runner) as gate, Client(small_queue.target, max_retries=0) as client:
        first = threading.Thread(target=lambda: client.encode(["held"]))
        first.start()
        deadline = time.monotonic() + 30
        while not small_queue.core.scheduler.busy:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        before = runner.rows_computed
        with pytest.raises(DeadlineExceededError):
            client.encode(["too late", "also too late"], timeout=0.2)
        # gone from the queue at the server's own deadline, which can fire a moment after
        # the client's (the server counts from when the call arrived), before the model is free
        gone_by = time.monotonic() + 2
        while small_queue.core.scheduler.queued and time.monotonic() < gone_by:
            time.sleep(0.005)
        assert small_queue.core.scheduler.queued == 0
        gate.set()
        first.join(timeout=30)
        client.encode(["afterwards"])
    assert runner.rows_computed - before == 2  # "held" and "afterwards", nothing of the late call


def test_a_failed_batch_fails_its_requests_and_the_server_goes_on(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert))
    try:
        assert thread.core is not None
        faults(thread.core.runner).fail_next = RuntimeError("injected fault")
        with Client(thread.target, max_retries=0) as client:
            with pytest.raises(InternalError, match="backbone"):
                client.encode(["this batch fails"])
            assert len(client.encode(["the next one works"])) == 1
    finally:
        thread.stop()


def test_a_row_too_large_for_the_device_fails_that_call_without_retries(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert))
    try:
        assert thread.core is not None
        runner = thread.core.runner
        faults(runner).fail_next = torch.cuda.OutOfMemoryError("injected")
        before = runner.rows_computed
        with Client(thread.target, max_retries=3) as client:
            with pytest.raises(ResourceExhaustedError, match="out of memory") as failed:
                client.encode(["alone in its batch"])
            assert failed.value.reason == "OUT_OF_MEMORY"
            # not retried: a retry would have computed the row (the fault was for one pass)
            assert runner.rows_computed == before
            assert len(client.encode(["the next one works"])) == 1
    finally:
        thread.stop()


def test_limits_are_reported(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(
        _settings(
            bert,
            max_batch_tokens=1234,
            max_batch_items=17,
            max_wait_ms=3.5,
            max_queue_items=99,
            stream_in_flight_items=7,
            workers=3,
            long_call_tokens=777,
            bulk_batch_tokens=55,
        )
    )
    try:
        with Client(thread.target) as client:
            s = client.model_info().scheduler
        assert (
            s.max_batch_tokens,
            s.max_batch_items,
            s.max_wait_ms,
            s.max_queue_items,
            s.stream_in_flight_items,
        ) == (1234, 17, 3.5, 99, 7)
        assert s.workers == 3 and s.torch_threads >= 1 and s.long_call_tokens == 777
        assert s.bulk_batch_tokens == 55
    finally:
        thread.stop()
