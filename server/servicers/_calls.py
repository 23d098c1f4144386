"""How every task RPC runs: unary batches, and bidirectional streams of batches.

A stream reads requests ahead (at most `in_flight` unanswered), runs them
concurrently, and answers in request order; a request that fails gets its own
error Status and the stream goes on. What refuses or ends a whole call is raised, for the
call pipeline and the transport to answer (pipeline.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import numpy as np

from headserve.plugins.contract import InvalidInput
from headserve.plugins.tasks import ImageItem, TextItem
from headserve.v1 import common_pb2

from ..call_info import CURRENT
from ..core import Core, Outcome
from ..errors import InvalidArgument, Unavailable
from ..limits import RequestLimits
from ..pipeline import items_in
from ..status import to_status

if TYPE_CHECKING:
    from ..tracing import Tracing


class Response(Protocol):
    def ByteSize(self) -> int: ...  # noqa: N802 (protobuf's name)


class BatchRequest(Protocol):
    """What every task's request message has: an id (streams) and its items (a Rerank
    request's are its documents: see `items_in`)."""

    @property
    def id(self) -> str: ...


Req = TypeVar("Req", bound=BatchRequest)
Opts = TypeVar("Opts")
Resp = TypeVar("Resp", bound=Response)


DEFAULT_STREAM_ITEMS = 256


class CoreHolder(Protocol):
    core: Core | None
    request_limits: RequestLimits
    draining: asyncio.Event  # set on shutdown: streams stop reading, answer what they read
    tracing: Tracing | None  # a span per stream request message when tracing is on


def ready(state: CoreHolder) -> Core:
    if state.core is None:
        raise Unavailable("the model is still loading; retry shortly")
    return state.core


def options(kind: Callable[..., Opts], **fields: Any) -> Opts:
    """A task's options from a request's fields. A field given as None is unset on the wire
    (proto3's 0) and takes the default of the options dataclass, where every default is
    defined. A bad option is INVALID_ARGUMENT."""
    try:
        return kind(**{name: value for name, value in fields.items() if value is not None})
    except InvalidInput as exc:
        raise InvalidArgument(exc.field, exc.message) from exc


def usage_timing(outcome: Outcome) -> dict[str, Any]:
    """Usage and Timing message fields for a response."""
    return {
        "usage": common_pb2.Usage(input_tokens=outcome.input_tokens),
        "timing": common_pb2.Timing(queue_ms=outcome.queue_ms, inference_ms=outcome.inference_ms),
    }


def text_items(items: Any) -> list[TextItem | ImageItem]:
    """The request's items: a text (or pair), or an image (`TextInput.image`)."""
    converted: list[TextItem | ImageItem] = []
    for index, item in enumerate(items):
        if item.HasField("image"):
            if item.text or item.HasField("text_pair"):
                raise InvalidArgument(
                    f"items[{index}]",
                    "carries an image and text: send one or the other",
                    item=index,
                )
            converted.append(ImageItem(item.image.data))
        else:
            converted.append(
                TextItem(item.text, item.text_pair if item.HasField("text_pair") else None)
            )
    return converted


def tensor(array: np.ndarray) -> common_pb2.Tensor:
    """A numpy array as a Tensor message: row-major, little-endian."""
    dtype = _DTYPES[array.dtype.name]
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return common_pb2.Tensor(shape=list(array.shape), dtype=dtype, data=data)


_DTYPES = {
    "float32": common_pb2.DTYPE_FLOAT32,
    "float16": common_pb2.DTYPE_FLOAT16,
    "int64": common_pb2.DTYPE_INT64,
    "int32": common_pb2.DTYPE_INT32,
}


@dataclass(frozen=True)
class Call:
    """What a handler needs to know of the RPC it serves."""

    deadline: float | None  # on time.perf_counter(), the scheduler's clock
    wait_for_room: bool  # streams wait for queue space; unary calls are refused at once

    @classmethod
    def current(cls, *, stream: bool) -> Call:
        """The running call's (its deadline as the call pipeline set it; none outside a call)."""
        info = CURRENT.get()
        return cls(info.deadline if info is not None else None, stream)


async def unary(
    state: CoreHolder,
    context: grpc.aio.ServicerContext,
    handle: Callable[[Call], Awaitable[Resp]],
) -> Resp:
    response = await handle(Call.current(stream=False))
    state.request_limits.check_response(response.ByteSize())
    return response


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
    context: grpc.aio.ServicerContext,
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

    async def read() -> None:
        try:
            async for request in requests:
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
        if reader.cancelled() and state.draining.is_set():
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
