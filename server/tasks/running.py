"""How every task's RPCs are answered, on any transport: a unary batch, and a bidirectional
stream of batches.

A stream reads requests ahead (at most `in_flight` unanswered), runs them
concurrently, and answers in request order; a request that fails gets its own
error Status and the stream goes on. What refuses or ends a whole call is raised, for the
call pipeline and the transport to answer (pipeline.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..call_info import PRIORITY
from ..calls.pipeline import items_in, priority_of
from ..calls.status import to_status
from ..core.engine import Core
from ..core.limits import RequestLimits
from ..errors import DeadlineExceeded, InvalidArgument, Unavailable
from .task import Task
from .wire import Call

if TYPE_CHECKING:
    from ..observability.tracing import Tracing


class Response(Protocol):
    def ByteSize(self) -> int: ...  # noqa: N802 (protobuf's name)


class BatchRequest(Protocol):
    """What every task's request message has: an id (streams) and its items (a Rerank
    request's are its documents: see `items_in`)."""

    @property
    def id(self) -> str: ...


Req = TypeVar("Req", bound=BatchRequest)
Resp = TypeVar("Resp", bound=Response)


DEFAULT_STREAM_ITEMS = 256


class CoreHolder(Protocol):
    core: Core | None
    request_limits: RequestLimits
    draining: asyncio.Event  # set on shutdown: streams stop reading, answer what they read
    tracing: Tracing | None  # a span per stream request message when tracing is on
    stream_idle_timeout: float  # seconds a stream may send nothing, none in flight (0: any)


def ready(state: CoreHolder) -> Core:
    if state.core is None:
        raise Unavailable("the model is still loading; retry shortly")
    return state.core


async def unary(state: CoreHolder, handle: Callable[[Call], Awaitable[Resp]]) -> Resp:
    response = await handle(Call.current(stream=False))
    state.request_limits.check_response(response.ByteSize())
    return response


async def _until_idle(
    requests: AsyncIterator[Req], seconds: float, busy: Callable[[], bool]
) -> AsyncIterator[Req]:
    """`requests`, ended with DEADLINE_EXCEEDED once none has come for `seconds` while none
    of the stream's is being computed (0: no limit; --stream-idle-timeout)."""
    if not seconds:
        async for request in requests:
            yield request
        return
    iterator = aiter(requests)
    while True:
        coming = asyncio.ensure_future(anext(iterator))
        try:
            while not (await asyncio.wait({coming}, timeout=seconds))[0]:
                if not busy():
                    raise DeadlineExceeded(
                        f"this stream sent no request for {seconds:g} s with nothing in "
                        "flight (--stream-idle-timeout): it is closed; open a new one when "
                        "there is work"
                    )
        finally:
            if not coming.done():
                coming.cancel()
        try:
            request = coming.result()
        except StopAsyncIteration:
            return
        yield request


class _Budget:
    """Items in flight on one stream, capped; a request over the cap waits (and so does reading)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> None:
        while self.used and self.used + n > self.cap:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()

    def releaser(self, n: int) -> Callable[[object], None]:
        """A done-callback that gives back `n` items."""
        return lambda _: self.release(n)


async def stream(
    requests: AsyncIterator[Req],
    state: CoreHolder,
    handle: Callable[[Req, Call], Awaitable[Any]],
    reply: Callable[..., Resp],
) -> AsyncIterator[Resp]:
    """Answer each request of a stream, in order, with `reply(id=, response= or error=)`."""
    call = Call.current(stream=True)
    cap = state.core.scheduler.limits.stream_in_flight_items if state.core else DEFAULT_STREAM_ITEMS
    budget = _Budget(cap)
    if state.tracing is not None:
        handle = state.tracing.message(handle, items_in)
    pending: asyncio.Queue[tuple[str, asyncio.Future[Any]] | None] = asyncio.Queue()

    idle = state.stream_idle_timeout

    async def read() -> None:
        try:
            async for request in _until_idle(requests, idle, lambda: budget.used > 0):
                n = max(1, items_in(request))
                await budget.acquire(n)
                task = asyncio.ensure_future(handle(request, call))
                task.add_done_callback(budget.releaser(n))
                pending.put_nowait((request.id, task))
        finally:
            pending.put_nowait(None)

    reader = asyncio.ensure_future(read())
    # On shutdown the stream stops reading; every request already read is still answered.
    drain = asyncio.ensure_future(state.draining.wait())
    drain.add_done_callback(lambda _: reader.cancel())
    answered = 0
    try:
        while (entry := await pending.get()) is not None:
            request_id, task = entry
            try:
                response = await task
                state.request_limits.check_response(response.ByteSize())
                yield reply(id=request_id, response=response)
            except Exception as exc:
                yield reply(id=request_id, error=to_status(exc))
            answered += 1
        # cut by the drain: cancelled by it, or its read failed as the server stopped
        cut = reader.done() and (reader.cancelled() or reader.exception() is not None)
        if cut and state.draining.is_set():
            raise Unavailable(
                f"the server is shutting down: this stream's {answered} requests that were "
                "read have all been answered; send the rest to another server"
            )
        await reader  # surfaces a broken request stream
    finally:
        drain.cancel()
        reader.cancel()
        while not pending.empty():
            entry = pending.get_nowait()
            if entry is not None:
                entry[1].cancel()


Unary = Callable[[Any], Awaitable[Any]]  # a request message -> its response
Streaming = Callable[[AsyncIterator[Any]], AsyncIterator[Any]]  # requests -> stream replies


def answering(state: CoreHolder, task: Task) -> tuple[Unary, Streaming | None]:
    """What answers `task`'s unary RPC and its stream (None: it has none), on any transport:
    the running call's deadline, the model loaded, the response's size checked."""

    async def answer(request: Any, call: Call) -> Any:
        # run in the message's own task (a stream's) or the call's (unary): its class of
        # work holds for this message alone
        asked = priority_of(request)
        if asked is not None:
            PRIORITY.set(asked)
        elif getattr(request, "priority", 0):
            raise InvalidArgument("priority", f"unknown value {request.priority}")
        return await task.answer(ready(state), request, call)

    async def one(request: Any) -> Any:
        return await unary(state, lambda call: answer(request, call))

    def many(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return stream(requests, state, answer, task.stream_reply)

    return one, many if task.streams else None
