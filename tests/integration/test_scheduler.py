"""The scheduler: batching across calls and heads, deadlines, cancellation, backpressure, faults."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from serving import ServerThread

from headserve.client import (
    AsyncClient,
    Batch,
    Client,
    InternalError,
    ResourceExhaustedError,
)
from headserve.plugins.contract import Features, Head, HeadSpec, Prepared, Row
from headserve.server.app import Settings
from headserve.server.backbone import Backbone
from headserve.server.errors import DeadlineExceeded, HeadFailed, OutOfMemory
from headserve.server.runner import Runner, Work
from headserve.server.scheduler import Limits, Scheduler


class EchoHead(Head):
    """Returns each row's first hidden state; optionally raises, or waits for a gate."""

    task = "test"

    def __init__(
        self, name: str, *, fail: bool = False, gate: threading.Event | None = None
    ) -> None:
        self.name = name
        self.fail = fail
        self.gate = gate
        self.rows_seen = 0

    def prepare(self, item: Any, options: Any) -> Prepared:
        raise NotImplementedError

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.fail:
            raise RuntimeError("boom")
        self.rows_seen += len(rows)
        return [features.hidden[i, 0].clone() for i in range(len(rows))]

    def finish(self, prepared: Prepared, outputs: Sequence[Any], options: Any) -> Any:
        raise NotImplementedError


@pytest.fixture(scope="module")
def backbone(bert) -> Backbone:  # type: ignore[no-untyped-def]
    return Backbone.load(bert.backbone, device="cpu")


def _metric(scheduler: Scheduler, name: str, **labels: str) -> float | None:
    return scheduler.metrics.registry.get_sample_value(name, labels)


def _row(backbone: Backbone, text: str) -> Row:
    return Row(tuple(backbone.tokenizer(text)["input_ids"]))


def test_deadlines_and_cancellations_never_reach_the_model(backbone: Backbone) -> None:
    gate = threading.Event()
    blocker_head, head = EchoHead("blocker", gate=gate), EchoHead("echo")
    runner = Runner(backbone)
    scheduler = Scheduler(runner, Limits(max_wait_ms=1))

    async def main() -> None:
        blocker = asyncio.ensure_future(
            scheduler.submit([Work(blocker_head, _row(backbone, "hold"))])
        )
        while not scheduler.busy:
            await asyncio.sleep(0.005)
        expired = asyncio.ensure_future(
            scheduler.submit(
                [Work(head, _row(backbone, f"late {i}")) for i in range(3)],
                deadline=time.monotonic() + 0.05,
            )
        )
        cancelled = asyncio.ensure_future(
            scheduler.submit([Work(head, _row(backbone, f"gone {i}")) for i in range(2)])
        )
        alive = asyncio.ensure_future(
            scheduler.submit([Work(head, _row(backbone, "still wanted"))])
        )
        await asyncio.sleep(0.02)
        cancelled.cancel()
        await asyncio.sleep(0.1)  # the deadline passes while the model is busy
        gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await expired
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        outputs, stats = await alive
        assert len(outputs) == 1 and stats.queue_ms > 100

    asyncio.run(main())
    assert head.rows_seen == 1  # only "still wanted"
    assert runner.rows_computed == 2  # the blocker and "still wanted"
    assert scheduler.dropped == 5
    assert _metric(scheduler, "headserve_rows_dropped_total", reason="deadline") == 3
    assert _metric(scheduler, "headserve_rows_dropped_total", reason="cancelled") == 2
    assert _metric(scheduler, "headserve_batch_rows_sum") == 2


def test_a_failing_head_fails_only_its_own_rows(backbone: Backbone) -> None:
    good, bad = EchoHead("good"), EchoHead("bad", fail=True)
    runner = Runner(backbone)
    scheduler = Scheduler(runner, Limits(max_wait_ms=50))

    async def main() -> None:
        ok = asyncio.ensure_future(scheduler.submit([Work(good, _row(backbone, "fine text"))]))
        broken = asyncio.ensure_future(scheduler.submit([Work(bad, _row(backbone, "other text"))]))
        (output,), _ = await ok
        assert output.shape == (32,)
        with pytest.raises(HeadFailed, match="'bad'"):
            await broken
        again, _ = await scheduler.submit([Work(good, _row(backbone, "after the failure"))])
        assert len(again) == 1

    asyncio.run(main())
    assert runner.batches == 2  # good and bad shared the first batch
    assert _metric(scheduler, "headserve_rows_failed_total", head="bad") == 1
    assert _metric(scheduler, "headserve_rows_failed_total", head="good") is None


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_calls_of_every_head_share_batches(backbone: Backbone, workers: int) -> None:
    heads = [EchoHead(f"h{i}") for i in range(4)]
    runner = Runner(backbone)
    scheduler = Scheduler(runner, Limits(max_wait_ms=20, workers=workers))
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(40)]

    async def main() -> list[Any]:
        calls = [
            scheduler.submit([Work(heads[i % 4], _row(backbone, t))]) for i, t in enumerate(texts)
        ]
        return await asyncio.gather(*calls)

    together = asyncio.run(main())
    assert runner.batches < len(texts) / 4  # 40 calls went through a handful of passes
    # the metrics saw the same batches: every row, its tokens, and the workers' CPU
    assert _metric(scheduler, "headserve_batch_rows_count") == runner.batches
    assert _metric(scheduler, "headserve_batch_rows_sum") == len(texts)
    assert _metric(scheduler, "headserve_batch_tokens_sum") == sum(
        len(_row(backbone, t).input_ids) for t in texts
    )
    assert _metric(scheduler, "headserve_queue_wait_seconds_count") == len(texts)
    assert 0 < _metric(scheduler, "headserve_model_cpu_seconds_total") < 60
    assert _metric(scheduler, "headserve_model_workers") == workers
    assert _metric(scheduler, "headserve_queue_rows") == 0
    for i, text in enumerate(texts):
        (alone,) = runner.compute([Work(heads[i % 4], _row(backbone, text))])
        np.testing.assert_allclose(together[i][0][0], alone, atol=1e-5)


def test_each_worker_computes_its_own_batch_at_the_same_time(backbone: Backbone) -> None:
    gate = threading.Event()
    held, head = EchoHead("held", gate=gate), EchoHead("echo")
    runner = Runner(backbone)
    scheduler = Scheduler(runner, Limits(max_wait_ms=1, workers=2))
    texts = ["first batch", "second batch", "third, waits for a free worker"]

    async def until(condition: Any) -> None:
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert condition()

    async def main() -> list[Any]:
        calls = []
        for text, ready in zip(
            texts,
            (
                lambda: scheduler.running == 1,
                lambda: scheduler.running == 2,  # two batches on the model at once
                lambda: scheduler.queued == 1,  # both workers busy: the third waits
            ),
            strict=True,
        ):
            calls.append(
                asyncio.ensure_future(scheduler.submit([Work(held, _row(backbone, text))]))
            )
            await until(ready)
        assert scheduler.running == 2 and runner.batches == 0
        gate.set()
        return [(await c)[0][0] for c in calls]

    together = asyncio.run(main())
    assert runner.batches == 3
    for text, output in zip(texts, together, strict=True):
        (alone,) = runner.compute([Work(head, _row(backbone, text))])
        np.testing.assert_allclose(output, alone, atol=1e-5)


class PriorityHead(EchoHead):
    """Records the nice value of the thread its forward runs on."""

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return super().forward(features, rows)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("nice", [0, 7])
def test_model_workers_run_below_the_event_loop(backbone: Backbone, nice: int) -> None:
    head = PriorityHead("priority")
    scheduler = Scheduler(Runner(backbone), Limits(workers=2, worker_nice=nice))
    asyncio.run(scheduler.submit([Work(head, _row(backbone, "which priority?"))]))
    scheduler.close()
    assert head.nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)


# --- through gRPC -----------------------------------------------------------------------------------


def _settings(bert, **limits: Any) -> Settings:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("sentiment", "classify", bert.classify),
    )
    return Settings(model_dir=bert.backbone, heads=heads, device="cpu", limits=Limits(**limits))


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


def test_full_queue_refuses_unary_calls_at_once_and_streams_wait(small_queue: ServerThread) -> None:
    assert small_queue.core is not None
    runner = small_queue.core.runner
    scheduler = small_queue.core.scheduler
    runner.hold = threading.Event()
    try:

        async def main() -> None:
            async with AsyncClient(small_queue.target, max_retries=0, timeout=30) as client:
                first = asyncio.ensure_future(client.encode(["held by the model"]))
                while not scheduler.busy:
                    await asyncio.sleep(0.005)
                queued = [asyncio.ensure_future(client.encode([f"queued {i}"])) for i in range(4)]
                while scheduler.queued < 4:
                    await asyncio.sleep(0.005)
                started = time.monotonic()
                with pytest.raises(ResourceExhaustedError, match="queue full"):
                    await client.encode(["one too many"])
                assert time.monotonic() - started < 1.0  # refused at once, not queued
                assert _metric(scheduler, "headserve_calls_refused_total") == 1
                assert _metric(scheduler, "headserve_queue_rows") == 4
                assert _metric(scheduler, "headserve_batches_running") == 1

                batches = [Batch([f"streamed {i}"], id=str(i)) for i in range(10)]
                results: list[Any] = []

                async def consume() -> None:
                    async for r in client.encode_stream(batches):
                        results.append(r)

                streaming = asyncio.ensure_future(consume())
                await asyncio.sleep(0.3)
                assert scheduler.queued == 4 and not results  # the stream waits, it is not refused
                runner.hold.set()  # type: ignore[union-attr]
                await asyncio.gather(first, *queued, streaming)
                assert [r.id for r in results] == [str(i) for i in range(10)]
                assert all(r.error is None for r in results)

        asyncio.run(main())
    finally:
        if runner.hold is not None:
            runner.hold.set()
        runner.hold = None


def test_stream_reads_no_further_than_its_in_flight_cap(small_queue: ServerThread) -> None:
    assert small_queue.core is not None
    runner = small_queue.core.runner
    scheduler = small_queue.core.scheduler
    runner.hold = threading.Event()
    try:
        with Client(small_queue.target, max_retries=0) as client:
            results: list[Any] = []
            thread = threading.Thread(
                target=lambda: results.extend(
                    client.encode_stream([Batch([f"s{i}"], id=str(i)) for i in range(8)])
                )
            )
            thread.start()
            time.sleep(0.5)
            # one item held by the model, at most one more queued: the cap is 2 items in flight
            assert scheduler.queued <= 1
            runner.hold.set()
            thread.join(timeout=30)
        assert [r.id for r in results] == [str(i) for i in range(8)]
    finally:
        runner.hold.set()
        runner.hold = None


def test_a_failed_batch_fails_its_requests_and_the_server_goes_on(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert))
    try:
        assert thread.core is not None
        thread.core.runner.fail_next = RuntimeError("injected fault")
        with Client(thread.target, max_retries=0) as client:
            with pytest.raises(InternalError, match="backbone"):
                client.encode(["this batch fails"])
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
        assert s.workers == 3 and s.torch_threads >= 1
    finally:
        thread.stop()


def test_a_call_past_its_deadline_is_not_computed(small_queue: ServerThread) -> None:
    from headserve.client import DeadlineExceededError

    assert small_queue.core is not None
    runner = small_queue.core.runner
    runner.hold = threading.Event()
    try:
        with Client(small_queue.target, max_retries=0) as client:
            first = threading.Thread(target=lambda: client.encode(["held"]))
            first.start()
            while not small_queue.core.scheduler.busy:
                time.sleep(0.005)
            before = runner.rows_computed
            with pytest.raises(DeadlineExceededError):
                client.encode(["too late", "also too late"], timeout=0.2)
            runner.hold.set()
            first.join(timeout=30)
            client.encode(["afterwards"])
        assert (
            runner.rows_computed - before == 2
        )  # "held" and "afterwards", nothing of the late call
    finally:
        runner.hold.set()
        runner.hold = None


def test_out_of_memory_splits_the_batch_and_retries_it(backbone: Backbone) -> None:
    head = EchoHead("echo")
    runner = Runner(backbone)
    work = [Work(head, _row(backbone, f"sentence {i} " + "word " * i)) for i in range(8)]
    expected = runner.run_batch(work)
    runner.fail_next = torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
    before = runner.batches
    outputs = runner.run_batch(work)
    assert runner.oom_splits == 1 and runner.batches == before + 2  # two halves
    assert _metric(Scheduler(runner, Limits()), "headserve_oom_splits_total") == 1
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want)
    # a single row that does not fit fails alone, as RESOURCE_EXHAUSTED, not a crash
    runner.fail_next = RuntimeError("CUDA error: out of memory")
    (failure,) = runner.run_batch(work[:1])
    assert isinstance(failure, OutOfMemory) and "one row" in str(failure)


def test_out_of_memory_through_grpc_fails_only_that_call(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert))
    try:
        assert thread.core is not None
        thread.core.runner.fail_next = torch.cuda.OutOfMemoryError("injected")
        with Client(thread.target, max_retries=0) as client:
            with pytest.raises(ResourceExhaustedError, match="out of memory"):
                client.encode(["alone in its batch"])
            assert len(client.encode(["the next one works"])) == 1
    finally:
        thread.stop()
