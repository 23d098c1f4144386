"""A task model's stand-in base returns the hidden states fed on the calling thread."""

from __future__ import annotations

import threading

import torch

from headserve.plugins.task_model import SharedOutputs


def test_two_workers_feeding_one_head_each_get_their_own_states() -> None:
    base = SharedOutputs(pooler=None)
    both_fed = threading.Barrier(2)
    seen: dict[int, torch.Tensor] = {}

    def worker(n: int) -> None:
        base.hidden = torch.full((1, 2, 3), float(n))
        both_fed.wait(timeout=10)  # the other worker has fed its batch too
        seen[n] = base().last_hidden_state
        base.hidden = None

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[1].eq(1).all() and seen[2].eq(2).all()
    assert base.hidden is None
