"""Backbone passes kept for rows seen before (`--feature-cache-mb`), so that a head that was
never run on a corpus can score it again without running the backbone.

What a head reads of a row (its token states, mask and ids, and an image backbone's pooled
output and tail input) is kept after the pass, keyed by what decides it: the backbone's weight
fingerprint, what runs the pass (runtime, dtype, device) and the row's exact inputs (its
`row_key`: token ids, token types, image, attended length). The entries are bounded in bytes,
the least recently used leaving first (cachetools' LRUCache, under a lock: the model workers
share it). A row found there skips the backbone; heads run on the kept states, laid out as the
pass lays them (padded to the batch's longest row, mask 0 past each row).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from cachetools import LRUCache

from headserve.plugins.backbones import Backbone, Computed
from headserve.plugins.contract import Row

from .runner import RowKey

ENTRY_OVERHEAD = 512  # bytes an entry costs beyond its tensors (key, objects), roughly


@dataclass(frozen=True, slots=True)
class Kept:
    """One row's part of a pass: [tokens, hidden], [tokens], [tokens]; pooled and intermediate
    (an image backbone's) without the row dimension, or None."""

    hidden: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor
    pooled: torch.Tensor | None
    intermediate: torch.Tensor | None

    @property
    def bytes(self) -> int:
        tensors = (self.hidden, self.mask, self.ids, self.pooled, self.intermediate)
        return ENTRY_OVERHEAD + sum(t.nbytes for t in tensors if t is not None)


def identity(backbone: Backbone) -> str:
    """What makes two passes of a row equal: the weights (their fingerprint) and what runs
    them (runtime, dtype, device)."""
    from headserve.plugins.artifact import backbone_fingerprint

    weights = backbone_fingerprint(backbone.source, backbone.view().module)
    return f"{weights}|{backbone.runtime}|{backbone.dtype}|{backbone.device}"


class _Entries(LRUCache[tuple[str, RowKey], Kept]):
    """An LRUCache that counts the entries it evicts to make room."""

    evicted = 0

    def popitem(self) -> tuple[tuple[str, RowKey], Kept]:
        item = super().popitem()
        self.evicted += 1
        return item


class PassCache:
    """Rows' backbone outputs, at most `max_bytes` of them."""

    def __init__(self, max_bytes: int, identity: str, *, bulk_only: bool = False) -> None:
        """`bulk_only`: rows of bulk calls alone are kept and looked up (jobs, re-indexing);
        interactive rows always go through the backbone."""
        self.max_bytes = max_bytes
        self.identity = identity
        self.bulk_only = bulk_only
        self._entries = _Entries(max_bytes, getsizeof=lambda kept: kept.bytes)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def evictions(self) -> int:
        return self._entries.evicted

    @property
    def bytes(self) -> int:
        return int(self._entries.currsize)

    def __len__(self) -> int:
        return len(self._entries)

    def run(
        self,
        backbone: Backbone,
        rows: Sequence[Row],
        row_keys: Sequence[RowKey],
        bulk: Sequence[bool] = (),
    ) -> tuple[Computed, int]:
        """The pass over `rows` (their `row_key`s: `row_keys`) as `backbone.run` gives it, the
        rows kept here taken from here and the others computed (and kept); and how many rows
        the backbone computed. `bulk`: per row, whether only bulk calls asked for it (with
        `bulk_only`, the others are neither looked up nor kept)."""
        keys = [(self.identity, key) for key in row_keys]
        if self.bulk_only:
            eligible = list(bulk) if bulk else [False] * len(rows)
            if not any(eligible):
                return backbone.run(rows), len(rows)
        else:
            eligible = [True] * len(rows)
        with self._lock:
            found = [
                self._entries.get(key) if ok else None
                for key, ok in zip(keys, eligible, strict=True)
            ]
            missing = [i for i, kept in enumerate(found) if kept is None]
            self.hits += len(rows) - len(missing)
            self.misses += sum(1 for i in missing if eligible[i])
        if len(missing) == len(rows):  # nothing kept: the pass as it comes, kept for next time
            computed = backbone.run(rows)
            self._keep(keys, rows, computed, eligible)
            return computed, len(rows)
        computed_rows = 0
        tokens = 0
        if missing:
            computed = backbone.run([rows[i] for i in missing])
            computed_rows, tokens = len(missing), computed.tokens
            for slot, i in enumerate(missing):
                found[i] = _kept(rows[i], computed, slot)
            self._keep(
                [keys[i] for i in missing],
                [rows[i] for i in missing],
                computed,
                [eligible[i] for i in missing],
            )
        return _laid_out([k for k in found if k is not None], tokens), computed_rows

    def _keep(
        self,
        keys: Sequence[tuple[str, RowKey]],
        rows: Sequence[Row],
        computed: Computed,
        eligible: Sequence[bool],
    ) -> None:
        kept = [
            _kept(row, computed, slot) if ok else None
            for slot, (row, ok) in enumerate(zip(rows, eligible, strict=True))
        ]
        with self._lock:
            for key, entry in zip(keys, kept, strict=True):
                # larger than the whole cache: never kept
                if entry is not None and entry.bytes <= self.max_bytes:
                    self._entries[key] = entry


def _kept(row: Row, computed: Computed, slot: int) -> Kept:
    """Row `slot` of a pass, copied out of the batch's tensors (so that they can go)."""
    length = len(row.input_ids) or computed.hidden.shape[1]  # an image: every position
    pooled, intermediate = computed.pooled, computed.intermediate
    return Kept(
        computed.hidden[slot, :length].clone(),
        computed.mask[slot, :length].clone(),
        computed.ids[slot, :length].clone(),
        pooled[slot].clone() if pooled is not None else None,
        intermediate[slot].clone() if intermediate is not None else None,
    )


def _laid_out(kept: Sequence[Kept], tokens: int) -> Computed:
    """Kept rows as one pass's output: padded to the longest, mask 0 (and id 0) past each."""
    longest = max(k.hidden.shape[0] for k in kept)
    first = kept[0]
    hidden = first.hidden.new_zeros((len(kept), longest, *first.hidden.shape[1:]))
    mask = first.mask.new_zeros((len(kept), longest))
    ids = first.ids.new_zeros((len(kept), longest))
    for i, k in enumerate(kept):
        n = k.hidden.shape[0]
        hidden[i, :n] = k.hidden
        mask[i, :n] = k.mask
        ids[i, :n] = k.ids
    pooled = torch.stack([k.pooled for k in kept]) if first.pooled is not None else None  # type: ignore[misc]
    intermediate = (
        torch.stack([k.intermediate for k in kept])  # type: ignore[misc]
        if first.intermediate is not None
        else None
    )
    return Computed(hidden, mask, ids, tokens, pooled, intermediate)
