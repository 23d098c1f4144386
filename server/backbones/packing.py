"""Running rows of different lengths through the backbone with little or no padding.

Padded: every row is padded to the longest; simple, but with real sentences a third
of the compute can go to padding. Packed: short rows are laid end to end in as few
sequences as `pack_tokens` tokens each would take, made as short as first-fit decreasing
allows (`balanced`), each row with its own position ids and a block-diagonal attention
mask, so a token attends only to its own row. The hidden
states are then gathered back into the padded layout the heads expect; each row's
states equal its padded (and its single) run up to float rounding, which the
backbone checks at load before it turns packing on.

Pure functions over rows of token ids: they lay out the backbone's inputs (and gather its
outputs back) and know nothing of the model; backbone.py runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from headserve.plugins.backbones import Computed
from headserve.plugins.contract import Row

__all__ = ["Computed", "Packed", "balanced", "bins", "pack", "padded", "unpack"]


def padded(rows: Sequence[Row], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, mask and token types [rows, longest], padded with `pad`."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        ids[i, :n] = torch.tensor(row.input_ids)
        mask[i, : n if row.attended is None else row.attended] = 1
        if row.token_type_ids is not None:
            types[i, :n] = torch.tensor(row.token_type_ids)
    return ids, mask, types


def bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: row indices grouped into sequences of at most `capacity` tokens."""
    packed: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((b for b, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            packed.append([i])
            room.append(capacity - lengths[i])
        else:
            packed[slot].append(i)
            room[slot] -= lengths[i]
    return packed


@dataclass(frozen=True)
class Packed:
    """Rows laid end to end: the backbone's inputs, and where each row starts."""

    ids: torch.Tensor  # [sequences, capacity]
    allowed: torch.Tensor  # [sequences, 1, capacity, capacity], block-diagonal
    types: torch.Tensor
    positions: torch.Tensor
    source: torch.Tensor  # [rows]: flat slot where each row starts
    lengths: list[int]

    def inputs(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(device) for t in (self.ids, self.allowed, self.types, self.positions))


def balanced(lengths: Sequence[int], pack_tokens: int) -> tuple[int, list[list[int]]]:
    """The capacity and sequences to pack `lengths` into: as few sequences as `pack_tokens`
    each would need (always the longest row), each as short as first-fit decreasing allows.

    Sequences of exactly `pack_tokens` leave the last one part empty (430 tokens in four
    sequences of 128: 16% padding); the same four sequences of 108-112 tokens leave a few.
    """
    longest, total = max(lengths), sum(lengths)
    limit = max(longest, pack_tokens)
    count = -(-total // limit)  # sequences needed at `limit`
    if count == 1:  # one sequence of exactly the rows: no padding at all
        return max(longest, total), [list(range(len(lengths)))]
    capacity = min(limit, _round_up(max(longest, -(-total // count))))
    while True:
        groups = bins(lengths, capacity)
        if len(groups) <= count or capacity >= limit:
            return capacity, groups
        capacity = min(limit, capacity + SHAPE_STEP)


SHAPE_STEP = 8  # capacities are multiples of this: few distinct shapes for the kernels' caches


def _round_up(n: int) -> int:
    return -(-n // SHAPE_STEP) * SHAPE_STEP


def pack(
    rows: Sequence[Row],
    *,
    pad: int,
    first_position: int,
    pack_tokens: int,
    balance: bool = True,
) -> Packed:
    """`rows` laid end to end in sequences of about `pack_tokens` tokens (at least the longest
    row), each row's positions counted from `first_position` (families.py), the rest `pad`.

    `balance`: sequences as short as the rows allow (`balanced`); else every sequence
    `pack_tokens` long, or all the rows when they are fewer (kept for bench/packing.py)."""
    lengths = [len(r.input_ids) for r in rows]
    if balance:
        capacity, groups = balanced(lengths, pack_tokens)
    else:
        capacity = max(max(lengths), min(pack_tokens, sum(lengths)))
        groups = bins(lengths, capacity)
    ids = torch.full((len(groups), capacity), pad, dtype=torch.long)
    types = torch.zeros((len(groups), capacity), dtype=torch.long)
    positions = torch.full((len(groups), capacity), first_position, dtype=torch.long)
    # segment of each slot: the row's index, or a unique negative number for padding,
    # so that a padding slot attends to itself only (a fully masked row would be NaN)
    segment = -1 - torch.arange(len(groups) * capacity).view(len(groups), capacity)
    # the segment each slot is read in as a key: a row's tokens past its `attended` are read by
    # none (another unique negative number), though they read their row
    keys = segment.clone()
    source = torch.zeros(len(rows), dtype=torch.long)
    for g, members in enumerate(groups):
        offset = 0
        for r in members:
            n = lengths[r]
            ids[g, offset : offset + n] = torch.tensor(rows[r].input_ids)
            if rows[r].token_type_ids is not None:
                types[g, offset : offset + n] = torch.tensor(rows[r].token_type_ids)
            positions[g, offset : offset + n] = torch.arange(first_position, first_position + n)
            segment[g, offset : offset + n] = r
            given = rows[r].attended
            attended = n if given is None else given
            keys[g, offset : offset + attended] = r
            keys[g, offset + attended : offset + n] -= len(groups) * capacity
            source[r] = g * capacity + offset
            offset += n
    allowed = (segment[:, :, None] == keys[:, None, :]).unsqueeze(1)  # [groups, 1, cap, cap]
    return Packed(ids, allowed, types, positions, source, lengths)


def unpack(states: torch.Tensor, packed: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed pass's states back in the padded layout: hidden [rows, longest, hidden] and
    mask [rows, longest], on the states' device."""
    lengths = packed.lengths
    steps = torch.arange(max(lengths))
    mask = (steps[None, :] < torch.tensor(lengths)[:, None]).long()
    # row r's token t is packed slot source[r] + t
    flat = (packed.source[:, None] + steps[None, :]).clamp(
        max=states.shape[0] * states.shape[1] - 1
    )
    hidden = states.reshape(-1, states.shape[-1])[flat.to(states.device)]
    return hidden, mask.to(states.device)
