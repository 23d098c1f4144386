"""Batch formation: the oldest row always goes, the token budget holds, lengths stay close."""

from __future__ import annotations

import random

import pytest

from headserve.server.core.scheduler import choose_batch


def test_oldest_row_goes_first_even_if_long() -> None:
    lengths = [5, 6, 7, 100, 8]
    waited = [0.1, 0.1, 0.1, 9.0, 0.1]
    batch = choose_batch(lengths, waited, max_items=8, max_tokens=200)
    assert 3 in batch
    assert max(lengths[i] for i in batch) * len(batch) <= 200


def test_groups_similar_lengths() -> None:
    lengths = [10, 11, 12, 50, 51, 52]
    waited = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    batch = choose_batch(lengths, waited, max_items=3, max_tokens=10_000)
    assert sorted(lengths[i] for i in batch) == [50, 51, 52]


@pytest.mark.parametrize("seed", range(20))
def test_budget_and_count_hold(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 200)
    lengths = [rng.randint(3, 128) for _ in range(n)]
    waited = [rng.random() for _ in range(n)]
    max_items = rng.randint(1, 64)
    max_tokens = rng.randint(128, 4096)
    batch = choose_batch(lengths, waited, max_items=max_items, max_tokens=max_tokens)
    oldest = max(range(n), key=lambda i: waited[i])
    assert oldest in batch and len(set(batch)) == len(batch)
    assert len(batch) <= max_items
    assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= max_tokens
    # the window is maximal: no row left out would have fitted next to it without breaking a limit
    if len(batch) < max_items:
        longest = max(lengths[i] for i in batch)
        rest = [i for i in range(n) if i not in batch]
        lo = min(lengths[i] for i in batch)
        neighbours = [i for i in rest if lengths[i] <= longest and lengths[i] >= lo]
        assert not neighbours or longest * (len(batch) + 1) > max_tokens


def test_packed_rows_go_oldest_first_within_the_token_budget() -> None:
    from headserve.server.core.scheduler import oldest_first

    lengths = [10, 50, 5, 30, 20]
    waited = [0.1, 0.5, 0.4, 0.2, 0.3]  # oldest: 1, 2, 4, 3, 0
    assert oldest_first(lengths, waited, max_items=3, max_tokens=1000) == [1, 2, 4]
    assert oldest_first(lengths, waited, max_items=10, max_tokens=60) == [1, 2]  # 50+5, +20 > 60
    assert oldest_first([500], [0.0], max_items=4, max_tokens=60) == [0]  # the first always goes
