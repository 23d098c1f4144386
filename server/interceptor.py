"""Around every headserve call: its request id, and its access-log lines.

The request id is the caller's `x-request-id` metadata, or one the server makes. It goes
back in the response's initial metadata, sent before anything else, so the caller has it
whether the call succeeds or fails; it is in `call_info.CURRENT` for the rest of the
server (error details, log lines, spans). With `request_id_in="trailing"` a unary call
carries it in its trailing metadata instead, with the response or the error: sending
initial metadata first is a write of its own, about 0.2 ms of the server's CPU per call
(BENCHMARKS.md). A stream always gets it first.

One access-log line per finished call, on the `headserve.access` logger: the RPC, its
status code, items, input tokens, queue and inference milliseconds (from the response's
Usage and Timing), the call's total milliseconds, request id and peer. A stream also logs a
line per request it answers, with the request's own `id` and outcome, and one when it
ends. Health and reflection calls are not logged. `--access-log off` turns the lines off;
the request id stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, cast

import grpc

from .call_info import REQUEST_ID_KEY, CallInfo, begin_call
from .servicers._calls import items_in
from .status import abort

# what an aio server interceptor is handed: the next step, which finds a method's handler
Continuation: TypeAlias = (
    "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]"
)

access_log = logging.getLogger("headserve.access")

SERVED_PREFIX = "/headserve.v1."  # the services whose calls get ids and access-log lines

CallHook = Callable[[CallInfo], None]  # told of each call's id as it starts (tracing)
EndHook = Callable[[str, str], None]  # told of each call's status code name and details
RequestIdIn = Literal["initial", "trailing"]  # where a unary call's id goes back
REQUEST_ID_IN: tuple[RequestIdIn, ...] = ("initial", "trailing")


@dataclass
class _Totals:
    """What a call's responses report, summed over a stream's responses."""

    items: int = 0
    input_tokens: int = 0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    messages: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, items: int, response: Any) -> None:
        self.items += items
        self.messages += 1
        if response is None:
            return
        usage, timing = getattr(response, "usage", None), getattr(response, "timing", None)
        if usage is not None:
            self.input_tokens += usage.input_tokens
        if timing is not None:
            self.queue_ms = max(self.queue_ms, timing.queue_ms)
            self.inference_ms += timing.inference_ms

    def fields(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "input_tokens": self.input_tokens,
            "queue_ms": round(self.queue_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "ms": round((time.perf_counter() - self.started) * 1e3, 3),
        }


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Request ids and access logs for every headserve.v1 call (see the module's docstring).

    `on_start` and `on_end` let tracing put the id and the final status on the call's span.
    """

    def __init__(
        self,
        *,
        access_log: bool = True,
        request_id_in: RequestIdIn = "initial",
        on_start: CallHook | None = None,
        on_end: EndHook | None = None,
    ) -> None:
        self._log = access_log
        self._unary_id_first = request_id_in == "initial"
        self._on_start = on_start
        self._on_end = on_end
        # A method's handler is the same object for every call: wrap it once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(SERVED_PREFIX):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler, method.removeprefix("/")))
            self._wrapped[method] = cached
        return cached[1]

    def _wrap(self, handler: grpc.RpcMethodHandler, rpc: str) -> grpc.RpcMethodHandler:
        codecs = dict(
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        # types-grpcio types the behaviours as plain functions; on a grpc.aio server they are
        # coroutine functions and async generators
        if handler.unary_unary:
            unary = cast(
                Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], handler.unary_unary
            )
            return grpc.unary_unary_rpc_method_handler(self._unary(unary, rpc), **codecs)
        if handler.stream_stream:
            stream = cast(
                Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
                handler.stream_stream,
            )
            return grpc.stream_stream_rpc_method_handler(self._stream(stream, rpc), **codecs)
        return handler  # headserve.v1 has no other kind of RPC

    async def _start(
        self, rpc: str, context: grpc.aio.ServicerContext, *, first: bool = True
    ) -> CallInfo:
        """The call's id, set for everything it runs and sent back to the caller: `first`, in
        the initial metadata; else in the trailing metadata, with the call's end."""
        call, refused = begin_call(context.invocation_metadata(), rpc)
        if self._on_start is not None:
            self._on_start(call)
        metadata = ((REQUEST_ID_KEY, call.request_id),)
        if first:
            await context.send_initial_metadata(metadata)
        else:  # an error's status adds the id to its own trailing metadata (status.abort)
            context.set_trailing_metadata(metadata)
        if refused is not None:
            await abort(context, refused)
        return call

    def _unary(
        self, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], rpc: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            totals = _Totals()
            response, cancelled = None, False
            peer = context.peer() if self._log else ""  # asked now: see _end
            try:
                await self._start(rpc, context, first=self._unary_id_first)
                response = await behavior(request, context)
                return response
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                if self._log:
                    totals.add(items_in(request), response)
                self._end("call", rpc, context, cancelled, totals.fields, peer)

        return unary

    def _stream(
        self,
        behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
        rpc: str,
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            totals = _Totals()
            read: deque[tuple[str, int, float]] = deque()  # answered in order, one reply each
            peer = context.peer() if self._log else ""  # asked now: see _end

            async def counted() -> AsyncIterator[Any]:
                async for request in requests:
                    read.append((request.id, items_in(request), time.perf_counter()))
                    yield request

            cancelled = False
            try:
                await self._start(rpc, context)
                async for reply in behavior(counted(), context):
                    if self._log and read:
                        self._log_message(rpc, peer, read.popleft(), reply, totals)
                    yield reply
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                self._end(
                    "stream",
                    rpc,
                    context,
                    cancelled,
                    lambda: {"messages": totals.messages, **totals.fields()},
                    peer,
                )

        return stream

    def _end(
        self,
        kind: str,
        rpc: str,
        context: grpc.aio.ServicerContext,
        cancelled: bool,
        fields: Callable[[], dict[str, Any]],
        peer: str,
    ) -> None:
        """A finished call: its status to tracing, its line to the access log. The caller's
        address (`peer`) is asked of gRPC as the call starts: asked of a call already ended
        (a stream refused as it opened), grpc.aio's context crashed the process once."""
        code, details = _final_status(context, cancelled)
        if self._on_end is not None:
            self._on_end(code, details)
        if self._log:
            _log_line(kind, rpc, code, fields(), peer)

    def _log_message(
        self,
        rpc: str,
        peer: str,
        request: tuple[str, int, float],
        reply: Any,
        totals: _Totals,
    ) -> None:
        message_id, items, read_at = request
        failed = reply.HasField("error")
        response = None if failed else reply.response
        totals.add(items, response)
        one = _Totals(started=read_at)
        one.add(items, response)
        code = reply.error.code if failed else grpc.StatusCode.OK.value[0]
        fields = {"message_id": message_id, **one.fields()}
        _log_line("stream message", rpc, _NAMES.get(code, str(code)), fields, peer)


_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def _final_status(context: grpc.aio.ServicerContext, cancelled: bool) -> tuple[str, str]:
    """The call's status code name and details, as far as the server set them."""
    if cancelled:
        return "CANCELLED", ""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name, context.details() or ""
    return _NAMES.get(code or 0, str(code)), context.details() or ""


def _log_line(kind: str, rpc: str, code: str, fields: dict[str, Any], peer: str) -> None:
    """One access-log line ("call", "stream", "stream message"); the log filter adds the
    call's request id (logs.py)."""
    access_log.info(kind, extra={"fields": {"rpc": rpc, "code": code, **fields, "peer": peer}})
