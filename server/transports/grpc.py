"""gRPC's way into the call pipeline: the server's handlers, made from the table of tasks, and
one interceptor around every RPC of the server.

A task's call becomes an `Arrival` (its metadata, `grpc-timeout`, peer) and runs
through the pipeline (pipeline.py), which admits it and ends it; an error the call raises
goes back as its google.rpc status (status.py). The request id goes back in the response's
initial metadata, sent before anything else, so the caller has it whether the call succeeds
or fails. With `request_id_in="trailing"` a unary call carries it in its trailing metadata
instead, with the response or the error: sending initial metadata first is a write of its
own, about 0.2 ms of the server's CPU per call (BENCHMARKS.md). A stream always gets it first.

Health checks and reflection are not headserve calls: they only need a token when the
server has tokens (health checks not even then, with --open-health).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, cast

import grpc

from ..call_info import REQUEST_ID_KEY, RequestIdIn
from ..calls.decoding import decoded, decoder
from ..calls.pipeline import Arrival, Call, Pipeline, items_in
from ..calls.security import DENIED
from ..calls.status import abort, trailers
from ..errors import Overloaded, Unauthenticated
from ..tasks import Task, services
from ..tasks.running import CoreHolder, answering

# what an aio server interceptor is handed: the next step, which finds a method's handler
Continuation: TypeAlias = (
    "Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]]"
)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
HEALTH_WATCH = HEALTH_PREFIX + "Watch"


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def handlers(state: CoreHolder, tasks: Sequence[Task]) -> list[grpc.GenericRpcHandler]:
    """A gRPC handler per service of `tasks`: each task's unary RPC and its stream."""
    made = []
    for name, (_, held) in services(tasks).items():
        methods: dict[str, grpc.RpcMethodHandler] = {}
        for task in held:
            one, many = answering(state, task)
            decode = decoder(task.request)
            methods[task.rpc] = grpc.unary_unary_rpc_method_handler(
                _unary(one),
                request_deserializer=decode,
                response_serializer=task.response.SerializeToString,
            )
            if many is not None:
                methods[task.stream_rpc] = grpc.stream_stream_rpc_method_handler(
                    _streaming(many),
                    request_deserializer=decode,
                    response_serializer=task.stream_reply.SerializeToString,
                )
        made.append(grpc.method_handlers_generic_handler(name, methods))
    return made


def _unary(one: Callable[[Any], Awaitable[Any]]) -> Unary:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await one(decoded(request))

    return behavior


def _streaming(many: Callable[[AsyncIterator[Any]], AsyncIterator[Any]]) -> Streaming:
    async def each_decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            yield decoded(request)  # one undecodable ends the stream: its id cannot be read

    async def behavior(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for reply in many(each_decoded(requests)):
            yield reply

    return behavior


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC of the tasks through the call pipeline; the token for the others."""

    def __init__(
        self,
        pipeline: Pipeline,
        tasks: Sequence[Task],
        *,
        request_id_in: RequestIdIn = "initial",
        max_health_watches: int = 16,
        others: Sequence[str] = (),
    ) -> None:
        """`others`: RPCs besides the tasks' run as calls ("/headserve.v1.Jobs/GetJob")."""
        self._pipeline = pipeline
        self._max_watches = max_health_watches
        self.watches = 0  # health Watch streams open now
        self._served = (
            {f"/{task.full_name}" for task in tasks}
            | {f"/{task.service.full_name}/{task.stream_rpc}" for task in tasks if task.streams}
            | set(others)
        )
        self._admin = {f"/{task.full_name}" for task in tasks if task.admin}
        self._unary_id_first = request_id_in == "initial"
        # A method's handler is the same object for every call: wrap it once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None:
            return handler
        if method not in self._served:
            public = self._pipeline.open_health and method.startswith(HEALTH_PREFIX)
            if not (public or self._pipeline.allows(details.invocation_metadata or ())):
                return _denying(handler)
            if method == HEALTH_WATCH and handler.unary_stream:
                return self._capped_watch(handler)
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(handler, method))
            self._wrapped[method] = cached
        return cached[1]

    def _capped_watch(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Health's Watch, at most `max_health_watches` at once: a budget of its own, so that
        watches (which need no token with --open-health) never take a call's place."""
        watch = cast(
            Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]], handler.unary_stream
        )

        async def capped(request: Any, context: grpc.aio.ServicerContext) -> None:
            if self.watches >= self._max_watches:
                await abort(
                    context,
                    Overloaded(
                        f"{self.watches} health watches are open, the most this server keeps "
                        f"({self._max_watches}, --max-health-watches); use Health.Check"
                    ),
                )
            self.watches += 1
            try:
                await watch(request, context)
            finally:
                self.watches -= 1

        return grpc.unary_stream_rpc_method_handler(
            capped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        rpc = method.removeprefix("/")
        codecs = dict(
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        # types-grpcio types the behaviours as plain functions; on a grpc.aio server they are
        # coroutine functions and async generators
        if handler.unary_unary:
            unary = cast(Unary, handler.unary_unary)
            admin = method in self._admin
            return grpc.unary_unary_rpc_method_handler(
                self._unary(unary, rpc, admin=admin), **codecs
            )
        if handler.stream_stream:
            stream = cast(Streaming, handler.stream_stream)
            return grpc.stream_stream_rpc_method_handler(self._stream(stream, rpc), **codecs)
        if handler.stream_unary:  # an upload: a call as long as its requests come
            upload = cast(Unary, handler.stream_unary)
            return grpc.stream_unary_rpc_method_handler(
                self._unary(upload, rpc, stream=True), **codecs
            )
        if handler.unary_stream:  # a download
            download = cast(Streaming, handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(self._download(download, rpc), **codecs)
        return handler

    def _unary(
        self, behavior: Unary, rpc: str, *, admin: bool = False, stream: bool = False
    ) -> Unary:
        """A call with one response (`stream`: its requests stream in)."""
        pipeline = self._pipeline
        id_first = self._unary_id_first

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            items = 0 if stream else items_in(request)
            arrival = _arrival(context, rpc, items=items, admin=admin, stream=stream)

            async def work(call: Call) -> Any:
                response = await behavior(request, context)
                trailing = trailers()  # the versions of the heads that answered
                if trailing:
                    own = () if id_first else ((REQUEST_ID_KEY, call.request_id),)
                    context.set_trailing_metadata((*own, *trailing))
                return response

            try:
                return await pipeline.unary(
                    arrival, work, announce=_send_id(context, first=id_first)
                )
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await abort(context, exc)

        return unary

    # grpc.aio serves a streamed answer from an async generator function only
    def _stream(self, behavior: Streaming, rpc: str) -> Streaming:
        async def stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            work = lambda call: behavior(call.reading(requests), context)  # noqa: E731
            async for reply in self._replies(context, rpc, work):
                yield reply

        return stream

    def _download(self, behavior: Streaming, rpc: str) -> Streaming:
        async def download(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for reply in self._replies(context, rpc, lambda call: behavior(request, context)):
                yield reply

        return download

    async def _replies(
        self,
        context: grpc.aio.ServicerContext,
        rpc: str,
        work: Callable[[Call], AsyncIterator[Any]],
    ) -> AsyncIterator[Any]:
        """A streamed answer's replies, through the pipeline."""
        # The caller's address is asked of gRPC as the call starts: asked of a call already
        # ended (a stream refused as it opened), grpc.aio's context crashed the process once.
        arrival = _arrival(context, rpc, stream=True)
        try:
            async for reply in self._pipeline.stream(
                arrival, work, announce=_send_id(context, first=True)
            ):
                yield reply
            trailing = trailers()  # the versions of the heads that answered its messages
            if trailing:
                context.set_trailing_metadata(trailing)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort(context, exc)


def _send_id(
    context: grpc.aio.ServicerContext, *, first: bool
) -> Callable[[Call], Awaitable[None]]:
    """The call's id back to the caller: `first`, in the initial metadata; else in the
    trailing metadata, with the call's end (an error's status adds it too: status.abort)."""

    async def send(call: Call) -> None:
        metadata = ((REQUEST_ID_KEY, call.request_id),)
        if first:
            await context.send_initial_metadata(metadata)
        else:
            context.set_trailing_metadata(metadata)

    return send


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers UNAUTHENTICATED and reads nothing."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, Unauthenticated(DENIED))

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, Unauthenticated(DENIED))
        yield  # pragma: no cover (makes this an async generator)

    codecs = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(streaming, **codecs)


def _arrival(
    context: grpc.aio.ServicerContext,
    rpc: str,
    *,
    items: int = 0,
    stream: bool = False,
    admin: bool = False,
) -> Arrival:
    """What the call's context tells: its metadata, the time its caller allows, its peer."""
    return Arrival(
        "grpc",
        rpc,
        tuple(context.invocation_metadata() or ()),
        context.time_remaining(),
        context.peer(),
        items=items,
        stream=stream,
        admin=admin,
    )
