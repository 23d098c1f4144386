"""Runs one batch of rows, of any heads, through ONE backbone pass (synchronous).

Identical rows (the same text asked of two classifiers, say) go through the
backbone once. Each head then runs on its own rows, trimmed to their longest
row, and must return one output per row. A head that raises, or returns the
wrong number of outputs, fails only its own rows: the others keep their results. A
backbone pass that runs out of memory is split in two and each half retried.
Several worker threads may run batches at once; the counters are kept under a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headserve.plugins.backbones import Backbone
from headserve.plugins.contract import Features, Head, Row

from ..backbones.packing import Computed
from ..errors import HeadFailed, OutOfMemory

if TYPE_CHECKING:
    from .pass_cache import PassCache

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, however torch raised it."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


RowKey = tuple[tuple[int, ...], tuple[int, ...] | None, str | None, int | None]


def row_key(row: Row) -> RowKey:
    """Rows with equal keys have equal backbone outputs: they are computed once."""
    return (row.input_ids, row.token_type_ids, row.pixels.key if row.pixels else None, row.attended)


@dataclass(frozen=True)
class Work:
    """One row for one head."""

    head: Head
    row: Row
    bulk: bool = False  # a bulk call's (the feature cache may keep bulk rows alone)


@dataclass(frozen=True)
class HeadTiming:
    """One head's forward over its rows of a pass (times on time.perf_counter())."""

    head: str
    rows: int
    started: float
    ended: float
    failed: bool


@dataclass(frozen=True)
class PassReport:
    """What one backbone pass computed, and when: what a batch's spans say of it."""

    rows: int  # distinct rows (a row asked of two heads is computed once)
    real_tokens: int  # their tokens
    padded_tokens: int  # the tokens the model computed for them, padding included
    started: float  # on time.perf_counter()
    ended: float  # the backbone's part done; the heads follow
    heads: tuple[HeadTiming, ...]


@dataclass(frozen=True)
class BatchRun:
    """Per row its output or the exception that failed it, and the passes that made them
    (more than one when a batch ran out of memory and was split)."""

    outputs: list[Any]
    passes: tuple[PassReport, ...]


class Runner:
    def __init__(self, backbone: Backbone, cache: PassCache | None = None) -> None:
        """`cache`: rows' passes kept from earlier batches (pass_cache.py); None: off."""
        self.backbone = backbone
        self.cache = cache
        self._lock = threading.Lock()
        self.rows_computed = 0  # backbone rows run so far (tests count them)
        self.batches = 0
        self.oom_splits = 0  # batches split in two after running out of memory

    def compute(
        self, work: Sequence[Work], *, max_items: int = 64, max_tokens: int = 16384
    ) -> list[Any]:
        """Outputs for every work item, in order, in length-sorted batches.

        Raises the first failure. What `headserve train-head` computes features with (and
        tests and benchmarks); a served call goes through the scheduler instead.
        """
        order = sorted(range(len(work)), key=lambda i: len(work[i].row.input_ids))
        outputs: list[Any] = [None] * len(work)
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < max_items
                and len(work[order[end]].row.input_ids) * (end - start + 1) <= max_tokens
            ):
                end += 1
            chunk = order[start:end]
            for i, result in zip(chunk, self.run_batch([work[i] for i in chunk]), strict=True):
                if isinstance(result, BaseException):
                    raise result
                outputs[i] = result
            start = end
        return outputs

    def run_batch(self, work: Sequence[Work]) -> list[Any]:
        """One backbone pass; per row its output, or the exception that failed it."""
        return self.run(work).outputs

    @torch.inference_mode()
    def run(self, work: Sequence[Work]) -> BatchRun:
        """`run_batch`, with a report of the pass(es) it took."""
        started = time.perf_counter()
        try:
            computed, slot, real_tokens = self._backbone_pass(work)
        except Exception as exc:
            if is_out_of_memory(exc):
                return self._after_out_of_memory(work, exc)
            log.exception("backbone failed on a batch of %d rows", len(work))
            failure = HeadFailed(f"the backbone failed on this batch: {exc!r}", head="backbone")
            return BatchRun([failure] * len(work), ())
        hidden, mask, ids = computed.hidden, computed.mask, computed.ids
        pooled, intermediate = computed.pooled, computed.intermediate
        backbone_done = time.perf_counter()
        heads: list[HeadTiming] = []
        outputs: list[Any] = [None] * len(work)
        by_head: dict[int, list[int]] = {}
        for position, w in enumerate(work):
            by_head.setdefault(id(w.head), []).append(position)
        for positions in by_head.values():
            head = work[positions[0]].head
            rows = [work[p].row for p in positions]
            longest = max(len(r.input_ids) for r in rows) or hidden.shape[1]  # images: all
            index = torch.tensor([slot[p] for p in positions], device=hidden.device)
            features = Features(
                hidden[index, :longest],
                mask[index, :longest],
                ids[index, :longest],
                pooled[index] if pooled is not None else None,
                intermediate[index] if intermediate is not None else None,
            )
            head_started, failed = time.perf_counter(), False
            try:
                results = list(head.forward(features, rows))
                if len(results) != len(rows):
                    raise ValueError(f"returned {len(results)} outputs for {len(rows)} rows")
            except Exception as exc:
                log.exception("head %s failed on a batch of %d rows", head.name, len(rows))
                error = HeadFailed(f"head {head.name!r} failed: {exc!r}", head=head.name)
                results, failed = [error] * len(rows), True
            heads.append(
                HeadTiming(head.name, len(rows), head_started, time.perf_counter(), failed)
            )
            for p, result in zip(positions, results, strict=True):
                outputs[p] = result
        with self._lock:
            self.batches += 1
        report = PassReport(
            rows=mask.shape[0],
            real_tokens=real_tokens,
            padded_tokens=computed.tokens,
            started=started,
            ended=backbone_done,
            heads=tuple(heads),
        )
        return BatchRun(outputs, (report,))

    def _after_out_of_memory(self, work: Sequence[Work], exc: BaseException) -> BatchRun:
        """Split the batch in two and run each half; a single row that does not fit fails."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(work) > 1:
            log.warning("out of memory on a batch of %d rows: splitting it in two", len(work))
            with self._lock:
                self.oom_splits += 1
            half = len(work) // 2
            first, second = self.run(work[:half]), self.run(work[half:])
            return BatchRun(first.outputs + second.outputs, first.passes + second.passes)
        tokens = work[0].row.length
        log.error("out of memory on a single row of %d tokens: %s", tokens, exc)
        failure = OutOfMemory(f"the model ran out of memory on one row of {tokens} tokens")
        return BatchRun([failure], ())

    def _backbone_pass(self, work: Sequence[Work]) -> tuple[Computed, list[int], int]:
        """The pass over the batch's distinct rows; each work item's slot in it; real tokens."""
        unique: dict[RowKey, Row] = {}
        slots: dict[RowKey, int] = {}
        bulk: dict[RowKey, bool] = {}  # asked by bulk calls alone
        slot = []
        for w in work:
            key = row_key(w.row)
            bulk[key] = bulk.get(key, True) and w.bulk
            if key not in unique:
                unique[key] = Row(
                    w.row.input_ids,
                    w.row.token_type_ids,
                    pixels=w.row.pixels,
                    attended=w.row.attended,
                )
                slots[key] = len(slots)
            slot.append(slots[key])
        rows = list(unique.values())
        if self.cache is not None:
            computed, count = self.cache.run(self.backbone, rows, list(unique), list(bulk.values()))
        else:
            computed, count = self.backbone.run(rows), len(rows)
        with self._lock:
            self.rows_computed += count
        return computed, slot, sum(row.length for row in rows)
