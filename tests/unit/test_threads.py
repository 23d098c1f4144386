"""How the cores are split between model workers and torch threads."""

from __future__ import annotations

import pytest
import torch

from headserve.server.core import threads
from headserve.server.core.threads import ThreadPlan, plan

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("cores", "device", "workers", "threads_each", "expected"),
    [
        (1, CPU, None, None, ThreadPlan(1, 1)),
        (2, CPU, None, None, ThreadPlan(2, 1)),  # this machine: two single-threaded workers
        (16, CPU, None, None, ThreadPlan(4, 4)),  # at most four workers, cores shared out
        (16, CPU, None, 8, ThreadPlan(2, 8)),  # threads given: workers fill the cores
        (16, CPU, 1, None, ThreadPlan(1, 16)),  # one worker: every core
        (16, GPU, None, None, ThreadPlan(1, 16)),  # one worker feeds the device
        (4, CPU, 3, 3, ThreadPlan(3, 3)),  # both given: taken as they are
    ],
)
def test_plan(monkeypatch, cores, device, workers, threads_each, expected) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(threads, "cores", lambda: cores)
    assert plan(device, workers, threads_each) == expected
