"""Runs rows of any heads through ONE backbone pass, off the event loop.

A batch holds rows of several heads; identical rows (the same text asked of two
classifiers, say) go through the backbone once. Each head then runs on its own
rows, trimmed to their longest row, and must return one output per row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from headserve.plugins.contract import Features, Head, Row

from .backbone import Backbone
from .errors import HeadFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """One row for one head."""

    head: Head
    row: Row


@dataclass(frozen=True)
class RunStats:
    queue_ms: float
    inference_ms: float


class Runner:
    def __init__(
        self,
        backbone: Backbone,
        *,
        max_batch_tokens: int = 16384,
        max_batch_rows: int = 64,
        threads: int | None = None,
    ) -> None:
        self.backbone = backbone
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="headserve-model")
        if threads:
            torch.set_num_threads(threads)
        self.rows_computed = 0  # backbone rows run so far (tests count them)

    async def run(self, work: Sequence[Work]) -> tuple[list[Any], RunStats]:
        arrived = time.perf_counter()
        loop = asyncio.get_running_loop()
        started: list[float] = []

        def job() -> list[Any]:
            started.append(time.perf_counter())
            return self.compute(work)

        outputs = await loop.run_in_executor(self._executor, job)
        done = time.perf_counter()
        return outputs, RunStats((started[0] - arrived) * 1e3, (done - started[0]) * 1e3)

    def compute(self, work: Sequence[Work]) -> list[Any]:
        """Outputs for every work item, in order; batches bounded in rows and padded tokens."""
        order = sorted(range(len(work)), key=lambda i: len(work[i].row.input_ids))
        outputs: list[Any] = [None] * len(work)
        batch: list[int] = []
        for i in order:
            longest = len(work[i].row.input_ids)
            if batch and (
                len(batch) >= self.max_batch_rows or longest * (len(batch) + 1) > self.max_batch_tokens
            ):
                self._compute_batch(work, batch, outputs)
                batch = []
            batch.append(i)
        if batch:
            self._compute_batch(work, batch, outputs)
        return outputs

    @torch.inference_mode()
    def _compute_batch(self, work: Sequence[Work], batch: list[int], outputs: list[Any]) -> None:
        unique: dict[tuple[tuple[int, ...], tuple[int, ...] | None], int] = {}
        slot = [unique.setdefault((work[i].row.input_ids, work[i].row.token_type_ids), len(unique)) for i in batch]
        keys = list(unique)
        device = self.backbone.device
        width = max(len(ids) for ids, _ in keys)
        pad = self.backbone.tokenizer.pad_token_id or 0
        ids = torch.full((len(keys), width), pad, dtype=torch.long)
        mask = torch.zeros((len(keys), width), dtype=torch.long)
        types = torch.zeros((len(keys), width), dtype=torch.long)
        for r, (row_ids, row_types) in enumerate(keys):
            ids[r, : len(row_ids)] = torch.tensor(row_ids)
            mask[r, : len(row_ids)] = 1
            if row_types is not None:
                types[r, : len(row_types)] = torch.tensor(row_types)
        ids, mask, types = ids.to(device), mask.to(device), types.to(device)
        hidden = self.backbone.forward(ids, mask, types)
        self.rows_computed += len(keys)

        by_head: dict[int, list[int]] = {}
        for position, i in enumerate(batch):
            by_head.setdefault(id(work[i].head), []).append(position)
        for positions in by_head.values():
            head = work[batch[positions[0]]].head
            rows_of = [slot[p] for p in positions]
            longest = max(len(work[batch[p]].row.input_ids) for p in positions)
            index = torch.tensor(rows_of, device=device)
            features = Features(hidden[index, :longest], mask[index, :longest], ids[index, :longest])
            rows = [work[batch[p]].row for p in positions]
            try:
                results = head.forward(features, rows)
            except Exception as exc:
                log.exception("head %s failed on a batch of %d rows", head.name, len(rows))
                raise HeadFailed(f"head {head.name!r} failed: {exc!r}", head=head.name) from exc
            if len(results) != len(rows):
                raise HeadFailed(
                    f"head {head.name!r} returned {len(results)} outputs for {len(rows)} rows",
                    head=head.name,
                )
            for p, result in zip(positions, results):
                outputs[batch[p]] = result

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
