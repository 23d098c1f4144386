"""A stream reads no further ahead than its in-flight cap: on one event loop, with requests the
test answers one by one, the stream has pulled exactly the requests it may hold, plus the one
waiting for room."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from batching import idle, until

from headserve.server.core.limits import RequestLimits
from headserve.server.core.scheduler import Limits
from headserve.server.tasks.running import stream
from headserve.server.tasks.wire import Call


@dataclass
class Request:
    id: str
    items: list[str]


@dataclass
class Response:
    id: str

    def ByteSize(self) -> int:  # noqa: N802 (protobuf's name)
        return 8


@dataclass
class Requests:
    """A client's requests, counting how many the server has pulled."""

    sizes: list[int]
    pulled: int = 0

    async def __aiter__(self) -> AsyncIterator[Request]:
        for n, size in enumerate(self.sizes):
            self.pulled += 1
            yield Request(str(n), ["x"] * size)


@dataclass
class Handler:
    """Answers each request when the test says so."""

    started: list[str] = field(default_factory=list)
    gates: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    async def __call__(self, request: Request, call: Call) -> Response:
        self.started.append(request.id)
        gate = self.gates[request.id] = asyncio.get_running_loop().create_future()
        await gate
        return Response(request.id)

    def answer(self, request_id: str) -> None:
        self.gates[request_id].set_result(None)


def _state(cap: int) -> Any:
    scheduler = SimpleNamespace(limits=Limits(stream_in_flight_items=cap))
    return SimpleNamespace(
        core=SimpleNamespace(scheduler=scheduler),
        request_limits=RequestLimits(),
        draining=asyncio.Event(),
        tracing=None,
        stream_idle_timeout=0.0,
    )


def test_a_stream_reads_no_further_than_its_in_flight_items() -> None:
    async def main() -> None:
        requests, handle = Requests([1, 1, 2, 1, 1]), Handler()
        replies: list[dict[str, Any]] = []

        async def consume() -> None:
            async for reply in stream(
                requests,  # type: ignore[arg-type]
                _state(cap=2),
                handle,
                lambda **kw: kw,
            ):
                replies.append(reply)

        consumer = asyncio.ensure_future(consume())
        await idle()
        # two items in flight (the cap); the third request is read and waits for room
        assert handle.started == ["0", "1"] and requests.pulled == 3
        handle.answer("0")
        await until(lambda: len(replies) == 1)
        await idle()
        # one item freed, but request 2 has two: it still waits, and nothing more is read
        assert handle.started == ["0", "1"] and requests.pulled == 3
        handle.answer("1")
        await until(lambda: handle.started == ["0", "1", "2"])
        await idle()
        assert requests.pulled == 4  # request 3 waits behind request 2's two items
        for n in ("2", "3", "4"):
            await until(lambda n=n: n in handle.gates)  # type: ignore[misc]
            handle.answer(n)
        await consumer
        assert [r["id"] for r in replies] == ["0", "1", "2", "3", "4"]
        assert all("error" not in r for r in replies)

    asyncio.run(main())
