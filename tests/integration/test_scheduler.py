"""The scheduler on the real model: batches across calls and heads give what each row gives
alone, a failing head fails only its rows, workers run below the event loop, and a batch out
of memory is split. Its batching rules are tested on fakes (tests/unit/test_batcher.py), the
queue's backpressure through gRPC in test_backpressure.py."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from faults import faults

from headserve.plugins.contract import Features, Head, Prepared, Row
from headserve.server.backbones.backbone import TextBackbone
from headserve.server.core.runner import Runner, Work
from headserve.server.core.scheduler import Limits, Scheduler
from headserve.server.errors import HeadFailed, OutOfMemory

T = TypeVar("T")


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
def backbone(bert) -> TextBackbone:  # type: ignore[no-untyped-def]
    return TextBackbone.load(bert.backbone, device="cpu")


def _metric(scheduler: Scheduler, name: str, **labels: str) -> float | None:
    return scheduler.metrics.registry.get_sample_value(name, labels)


async def _started(scheduler: Scheduler, main: Callable[[], Awaitable[T]]) -> T:
    async with scheduler:
        return await main()


def _row(backbone: TextBackbone, text: str) -> Row:
    return Row(tuple(backbone.tokenizer(text)["input_ids"]))


def test_a_failing_head_fails_only_its_own_rows(backbone: TextBackbone) -> None:
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

    asyncio.run(_started(scheduler, main))
    assert runner.batches == 2  # good and bad shared the first batch
    assert _metric(scheduler, "headserve_rows_failed_total", head="bad") == 1
    assert _metric(scheduler, "headserve_rows_failed_total", head="good") is None


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_calls_of_every_head_share_batches(backbone: TextBackbone, workers: int) -> None:
    heads = [EchoHead(f"h{i}") for i in range(4)]
    runner = Runner(backbone)
    scheduler = Scheduler(runner, Limits(max_wait_ms=20, workers=workers))
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(40)]

    async def main() -> list[Any]:
        calls = [
            scheduler.submit([Work(heads[i % 4], _row(backbone, t))]) for i, t in enumerate(texts)
        ]
        return await asyncio.gather(*calls)

    together = asyncio.run(_started(scheduler, main))
    assert runner.batches < len(texts) / 4  # 40 calls went through a handful of passes
    # the metrics saw the same batches: every row, its tokens, and the workers' CPU
    assert _metric(scheduler, "headserve_batch_rows_count") == runner.batches
    assert _metric(scheduler, "headserve_batch_rows_sum") == len(texts)
    assert _metric(scheduler, "headserve_batch_tokens_sum") == sum(
        len(_row(backbone, t).input_ids) for t in texts
    )
    assert _metric(scheduler, "headserve_queue_wait_seconds_count", priority="interactive") == len(
        texts
    )
    assert 0 < _metric(scheduler, "headserve_model_cpu_seconds_total") < 60
    assert _metric(scheduler, "headserve_model_workers") == workers
    assert _metric(scheduler, "headserve_queue_rows") == 0
    for i, text in enumerate(texts):
        (alone,) = runner.compute([Work(heads[i % 4], _row(backbone, text))])
        np.testing.assert_allclose(together[i][0][0], alone, atol=1e-5)


class PriorityHead(EchoHead):
    """Records the nice value of the thread its forward runs on."""

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return super().forward(features, rows)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("nice", [0, 7])
def test_model_workers_run_below_the_event_loop(backbone: TextBackbone, nice: int) -> None:
    head = PriorityHead("priority")
    scheduler = Scheduler(Runner(backbone), Limits(workers=2, worker_nice=nice))
    asyncio.run(
        _started(scheduler, lambda: scheduler.submit([Work(head, _row(backbone, "which?"))]))
    )
    assert head.nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)


def test_out_of_memory_splits_the_batch_and_retries_it(backbone: TextBackbone) -> None:
    head = EchoHead("echo")
    runner = Runner(backbone)
    work = [Work(head, _row(backbone, f"sentence {i} " + "word " * i)) for i in range(8)]
    expected = runner.run_batch(work)
    faults(runner).fail_next = torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
    before = runner.batches
    outputs = runner.run_batch(work)
    assert runner.oom_splits == 1 and runner.batches == before + 2  # two halves
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want)
    # a single row that does not fit fails alone, as RESOURCE_EXHAUSTED, not a crash
    faults(runner).fail_next = RuntimeError("CUDA error: out of memory")
    (failure,) = runner.run_batch(work[:1])
    assert isinstance(failure, OutOfMemory) and "one row" in str(failure)
