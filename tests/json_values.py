"""JSON answers compared as values: what a job's line answered against the unary call's."""

from __future__ import annotations

from typing import Any


def assert_close(got: Any, want: Any, skip: tuple[str, ...] = (), where: str = "") -> None:
    """JSON values equal, numbers within 1e-6 (`skip`: keys that differ by nature)."""
    if isinstance(want, dict):
        assert set(got) - set(skip) == set(want) - set(skip), where
        for key in want:
            if key not in skip:
                assert_close(got[key], want[key], skip, f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_close(a, b, skip, f"{where}[{i}]")
    elif isinstance(want, float):
        assert abs(got - want) <= 1e-6, where
    else:
        assert got == want, where
