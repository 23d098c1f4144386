"""The byte budget image decodes hold (core/budget.py): never more than its total at once,
waiters served in arrival order, nothing lost to a cancelled caller, and a cancelled caller's
thread holding its bytes until it really ends."""

from __future__ import annotations

import asyncio
import threading

import pytest

from headserve.server.core.budget import ByteBudget


def test_work_waits_for_room_in_arrival_order() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        gates = {name: threading.Event() for name in "abc"}
        started: list[str] = []

        def work(name: str) -> str:
            started.append(name)
            gates[name].wait(10)
            return name

        a = asyncio.ensure_future(budget.run(6, work, "a"))
        await asyncio.sleep(0.05)
        b = asyncio.ensure_future(budget.run(6, work, "b"))  # does not fit beside a
        c = asyncio.ensure_future(budget.run(3, work, "c"))  # would fit, but b came first
        await asyncio.sleep(0.05)
        assert started == ["a"] and budget.held == 6
        gates["a"].set()
        assert await a == "a"
        await asyncio.sleep(0.05)
        assert started == ["a", "b", "c"] and budget.held == 9
        gates["b"].set()
        gates["c"].set()
        assert await asyncio.gather(b, c) == ["b", "c"]
        assert (budget.held, budget.peak) == (0, 9)

    asyncio.run(main())


def test_a_cancelled_caller_holds_its_bytes_until_its_thread_ends() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        gate = threading.Event()
        running = asyncio.ensure_future(budget.run(8, gate.wait, 10))
        await asyncio.sleep(0.05)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert budget.held == 8  # the decode still runs: its memory is still taken
        gate.set()
        for _ in range(100):
            if budget.held == 0:
                break
            await asyncio.sleep(0.01)
        assert budget.held == 0

    asyncio.run(main())


def test_a_cancelled_waiter_lets_the_next_one_in() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        gate = threading.Event()
        first = asyncio.ensure_future(budget.run(5, gate.wait, 10))
        await asyncio.sleep(0.05)
        big = asyncio.ensure_future(budget.run(8, lambda: None))  # waits: 5 + 8 > 10
        small = asyncio.ensure_future(budget.run(4, lambda: "small"))  # waits behind big
        await asyncio.sleep(0.05)
        assert not small.done()
        big.cancel()
        assert await asyncio.wait_for(small, 5) == "small"
        gate.set()
        await first
        assert budget.held == 0

    asyncio.run(main())


def test_work_larger_than_the_whole_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="can never fit"):
        asyncio.run(ByteBudget(10).run(11, lambda: None))
