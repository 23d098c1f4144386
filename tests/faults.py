"""Faults for integration tests, installed around a real runner's backbone (never in the server's
own code): fail the next backbone pass, or hold every pass until the test lets it go."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from headserve.plugins.contract import Row
from headserve.server.backbones.packing import Computed
from headserve.server.core.runner import Runner


class FaultyBackbone:
    """The runner's backbone, with faults a test switches on; everything else passes through."""

    def __init__(self, backbone: Any) -> None:
        self.inner = backbone
        self.fail_next: BaseException | None = None
        self.gate: threading.Event | None = None  # set: passes go on; None: no hold
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, rows: Sequence[Row]) -> Computed:
        gate = self.gate
        if gate is not None and not gate.wait(timeout=60):
            raise RuntimeError("a test held the backbone for 60 s and never let go")
        with self._lock:
            fault, self.fail_next = self.fail_next, None
        if fault is not None:
            raise fault
        return self.inner.run(rows)


def faults(runner: Runner) -> FaultyBackbone:
    """The fault switch of `runner`'s backbone, installed the first time it is asked for."""
    if not isinstance(runner.backbone, FaultyBackbone):
        runner.backbone = FaultyBackbone(runner.backbone)  # type: ignore[assignment]
    return runner.backbone  # type: ignore[return-value]


@contextmanager
def held(runner: Runner) -> Iterator[threading.Event]:
    """Every backbone pass waits until the yielded event is set (at the latest on leaving)."""
    switch = faults(runner)
    gate = threading.Event()
    switch.gate = gate
    try:
        yield gate
    finally:
        gate.set()
        switch.gate = None
