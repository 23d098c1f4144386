"""A call's way in and its way out, whichever transport carried it.

Every headserve call, over gRPC (transports/grpc.py), over the OpenAI-style HTTP endpoint
(transports/http.py) or into a Ray Serve replica (transports/ray_serve.py), is admitted and
ended here. A transport turns what it received into an `Arrival` and hands `Pipeline.unary`
or `Pipeline.stream` the call's work; it writes the outcome back in its own wire format, an
error by its row of the error table (headserve.v1.errors). Nothing else of a call is its own.

On the way in, in this order (the first that refuses ends the call):

1. the request id: the caller's `x-request-id`, or a new one; in `call_info.CURRENT` for
   everything the call runs (error details, log lines, spans). With tracing on, the call's
   server span, continuing the caller's `traceparent`.
2. the bearer token, when the server has tokens: UNAUTHENTICATED. An admin call (HeadAdmin)
   needs an admin token instead: UNAUTHENTICATED without one, PERMISSION_DENIED for a
   caller's token, UNIMPLEMENTED (ADMIN_OFF) on a server without admin tokens.
3. what is malformed in the call's own head (a bad `x-request-id` or `x-priority`, an
   unreadable timeout): INVALID_ARGUMENT.
4. draining, then loading: UNAVAILABLE (a health check is answered either way).
5. the concurrency limit, over every transport (`--max-concurrent-calls`; a bulk call, its
   first three quarters), then for a stream `--max-streams`: RESOURCE_EXHAUSTED, which
   clients retry.
6. the deadline: the time the caller allows, as its transport tells it (gRPC's
   `grpc-timeout`, the OpenAI SDKs' read-timeout header, Serve's `request_timeout_s`).

A call's class of work (`x-priority: interactive`, the default, or `bulk`) is in
`call_info.PRIORITY` for everything it runs; a request message's own `priority` field
overrides it for that message (tasks/running.py).

On the way out: the status on the span, one line on the `headserve.access` log (and for a
stream a line per request message it answers), and the per-call metrics
(`headserve_calls_total` by transport, RPC, code and priority; `headserve_call_seconds`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence, Sized
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from headserve.v1 import common_pb2
from headserve.v1 import errors as table

from ..call_info import (
    CURRENT,
    PRIORITY,
    PRIORITY_KEY,
    REQUEST_ID_KEY,
    CallInfo,
    Priority,
    bulk_share,
    check_priority,
    check_request_id,
    new_request_id,
)
from ..errors import (
    AdminOff,
    HeadserveError,
    InvalidArgument,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from ..errors import kind_of as error_kind
from .security import TokenAuth, denied

if TYPE_CHECKING:
    from ..core.engine import Core
    from ..observability.metrics import Metrics
    from ..observability.tracing import Tracing

R = TypeVar("R")
Transport = Literal["grpc", "http", "ray", "job"]  # "job": a batch job's line (jobs/)

access_log = logging.getLogger("headserve.access")


class Serving(Protocol):
    """What admission reads of the server: its core once loaded, and whether it drains."""

    core: Core | None
    draining: asyncio.Event


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a transport knows of a call as it arrives."""

    transport: Transport
    rpc: str  # "headserve.v1.Encoder/Encode"; "HTTP /v1/embeddings"
    metadata: Sequence[tuple[str, Any]] = ()  # gRPC metadata, HTTP headers (lower-case keys)
    timeout: float | None = None  # seconds the caller allows; None: no deadline
    peer: str = ""
    items: int = 0  # items in a unary call's request
    stream: bool = False
    health: bool = False  # a health check: answered while loading or draining, never refused
    public: bool = False  # needs no token (a health check with --open-health)
    admin: bool = False  # an admin RPC: needs an admin token
    malformed: HeadserveError | None = None  # what the transport found wrong in its head


@dataclass(frozen=True)
class Admission:
    """Who may call, and how many at once; `None` limits are off (a Ray replica leaves the
    number of calls to Serve's max_ongoing_requests)."""

    tokens: tuple[str, ...] = ()
    open_health: bool = False
    admin_tokens: tuple[str, ...] = ()  # empty: the admin RPCs are off
    max_calls: int | None = None
    max_streams: int | None = None


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


class Call:
    """One call on its way through: its id, deadline and span, and what it answered."""

    def __init__(self, arrival: Arrival, span: Any) -> None:
        self.arrival = arrival
        self.started = time.perf_counter()
        self.span = span  # the call's server span; None without tracing
        given, asked = "", ""
        for key, value in arrival.metadata:
            if key == REQUEST_ID_KEY and isinstance(value, str):
                given = value
            elif key == PRIORITY_KEY and isinstance(value, str):
                asked = value
        problem = check_request_id(given) if given else None
        self.bad_id = _bad_request_id(given, problem) if problem else None
        priority = check_priority(asked) if asked else "interactive"
        if priority is None:
            self.bad_id = self.bad_id or _bad_priority(asked)
        self.priority: Priority = priority or "interactive"
        deadline = self.started + arrival.timeout if arrival.timeout is not None else None
        self.info = CallInfo(
            given if given and problem is None else new_request_id(), arrival.rpc, deadline
        )
        self.code = "OK"
        self.details = ""
        self.status: int | None = None  # an HTTP call's status (the adapter's, or its error's)
        self.totals = _Totals(started=self.started)
        # a stream's requests: id, items, when read, priority; answered in order
        self._read: deque[tuple[str, int, float, Priority]] | None = None
        if span is not None:
            span.set_attribute("headserve.request_id", self.info.request_id)

    @property
    def request_id(self) -> str:
        return self.info.request_id

    @property
    def deadline(self) -> float | None:
        """On time.perf_counter(), the scheduler's clock."""
        return self.info.deadline

    def failed(self, exc: BaseException) -> None:
        kind = table.CANCELLED if isinstance(exc, asyncio.CancelledError | GeneratorExit) else None
        kind = kind or error_kind(exc)
        self.code = kind.grpc
        self.details = exc.message if isinstance(exc, HeadserveError) else repr(exc)
        if self.arrival.transport == "http":
            self.status = kind.http

    def counted(self, response: Any) -> None:
        """A unary call's response, for its access line (its Usage and Timing)."""
        self.totals.add(self.arrival.items, response)

    def count(self, items: int, input_tokens: int) -> None:
        """A call whose answer is not a headserve message (HTTP): its items and tokens."""
        self.totals.items += items
        self.totals.input_tokens += input_tokens

    async def reading(self, requests: AsyncIterator[R]) -> AsyncIterator[R]:
        """A stream's requests, each noted for the access line of its answer."""
        read = self._read = deque()
        async for request in requests:
            asked = priority_of(request) or self.priority
            read.append((getattr(request, "id", ""), items_in(request), time.perf_counter(), asked))
            yield request

    def answered(self, reply: Any) -> None:
        """A stream's reply (answered in request order): its access line."""
        if not self._read:  # none read yet, or a stream read elsewhere
            return
        message_id, items, read_at, priority = self._read.popleft()
        failed = reply.HasField("error")
        response = None if failed else reply.response
        self.totals.add(items, response)
        one = _Totals(started=read_at)
        one.add(items, response)
        code = _code_name(reply.error.code) if failed else "OK"
        fields = {"message_id": message_id, "priority": priority, **one.fields()}
        _log_line("stream message", self, code, fields)


def priority_of(request: Any) -> Priority | None:
    """A request message's own class of work (its `priority` field); None: unset, or a
    message without one."""
    return _PRIORITY_OF.get(getattr(request, "priority", common_pb2.PRIORITY_UNSPECIFIED))


_PRIORITY_OF: dict[int, Priority] = {
    common_pb2.PRIORITY_INTERACTIVE: "interactive",
    common_pb2.PRIORITY_BULK: "bulk",
}


def items_in(request: Any) -> int:
    """How many items a request message carries: its `items`, or a Rerank's documents."""
    items: Sized | None = getattr(request, "items", None)
    if items is None:
        items = getattr(request, "documents", ())
    return len(items)


RUNNING: ContextVar[Call | None] = ContextVar("headserve_pipeline_call", default=None)


def current() -> Call:
    """The call the running code serves (a transport's adapter runs it in one)."""
    call = RUNNING.get()
    if call is None:
        raise RuntimeError("not inside a call: a transport runs calls through the pipeline")
    return call


class Pipeline:
    """Admission and end of every call of one server (or one Ray replica)."""

    def __init__(
        self,
        serving: Serving,
        admission: Admission,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        access_log: bool = True,
    ) -> None:
        self._serving = serving
        self._admission = admission
        self._auth = TokenAuth(admission.tokens) if admission.tokens else None
        self._admin = TokenAuth(admission.admin_tokens) if admission.admin_tokens else None
        self.metrics = metrics
        self.tracing = tracing
        self._access_log = access_log
        self.calls = 0  # admitted and not ended, every transport
        self.streams = 0
        if metrics is not None:
            metrics.calls_in_progress.set_function(lambda: self.calls)

    def allows(self, metadata: Sequence[tuple[str, Any]]) -> bool:
        """Whether `metadata` (or HTTP headers) carries one of the server's tokens."""
        return self._auth is None or self._auth.allows(metadata)

    @property
    def open_health(self) -> bool:
        return self._admission.open_health

    async def unary(
        self,
        arrival: Arrival,
        work: Callable[[Call], Awaitable[R]],
        *,
        announce: Callable[[Call], Awaitable[None]] | None = None,
    ) -> R:
        """`work(call)`'s answer, once the call is admitted; a refusal or `work`'s error is
        raised for the transport to send. `announce` sends the request id back first."""
        with self._through(arrival, "call") as call:
            if announce is not None:
                await announce(call)
            with self._admitted(call):
                response = await work(call)
            call.counted(response)
            return response

    async def stream(
        self,
        arrival: Arrival,
        work: Callable[[Call], AsyncIterator[R]],
        *,
        announce: Callable[[Call], Awaitable[None]] | None = None,
    ) -> AsyncIterator[R]:
        """`work(call)`'s replies, once the call is admitted; `work` reads its requests
        through `call.reading(...)` so that each reply gets its access line."""
        with self._through(arrival, "stream") as call:
            if announce is not None:
                await announce(call)
            with self._admitted(call):
                async for reply in work(call):
                    call.answered(reply)
                    yield reply

    @contextmanager
    def _through(self, arrival: Arrival, kind: str) -> Iterator[Call]:
        """A call from its beginning (id, span) to its end (status, access line, metrics),
        whatever ends it."""
        with self._span(arrival) as span:
            call = self._begin(arrival, span)
            try:
                yield call
            except BaseException as exc:
                call.failed(exc)
                raise
            finally:
                self._end(call, kind)

    def _span(self, arrival: Arrival) -> Any:
        if self.tracing is None:
            return nullcontext(None)
        return self.tracing.server_span(arrival.transport, arrival.rpc, arrival.metadata)

    def _begin(self, arrival: Arrival, span: Any) -> Call:
        call = Call(arrival, span)
        if self.metrics is not None:
            self.metrics.call_started(arrival.transport, arrival.rpc, arrival.stream)
        CURRENT.set(call.info)
        PRIORITY.set(call.priority)
        RUNNING.set(call)
        return call

    @contextmanager
    def _admitted(self, call: Call) -> Iterator[None]:
        """Admit `call` (raises what refuses it) and hold its places while the body runs."""
        arrival, admission = call.arrival, self._admission
        if arrival.admin:
            self._admit_admin(arrival)
        elif not (arrival.public or self.allows(arrival.metadata)):
            raise Unauthenticated(denied(arrival.transport))
        if call.bad_id is not None:
            raise call.bad_id
        if arrival.malformed is not None:
            raise arrival.malformed
        if not arrival.health:
            if self._serving.draining.is_set():
                raise Unavailable("the server is shutting down; send this to another server")
            if self._serving.core is None:
                raise Unavailable("the model is still loading; retry shortly")
            if admission.max_calls is not None and self.calls >= admission.max_calls:
                raise Overloaded(
                    f"{self.calls} calls are in progress, the most this server takes at once "
                    f"({admission.max_calls}, --max-concurrent-calls); retry later"
                )
            if call.priority == "bulk" and admission.max_calls is not None:
                most = bulk_share(admission.max_calls)
                if self.calls >= most:
                    raise Overloaded(
                        f"{self.calls} calls are in progress, the most this server takes while "
                        f"bulk work comes ({most}: the rest of --max-concurrent-calls is kept "
                        "for interactive calls); retry later"
                    )
        if arrival.stream and admission.max_streams is not None:
            if self.streams >= admission.max_streams:
                raise Overloaded(
                    f"{self.streams} streams are open, the most this server keeps "
                    f"({admission.max_streams}, --max-streams); retry later or reuse a stream"
                )
        self.calls += 1
        self.streams += arrival.stream
        try:
            yield
        finally:
            self.calls -= 1
            self.streams -= arrival.stream

    def _admit_admin(self, arrival: Arrival) -> None:
        """An admin call: an admin token, else why not."""
        if self._admin is None:
            if not self.allows(arrival.metadata):
                raise Unauthenticated(denied(arrival.transport))
            raise AdminOff(
                "the admin RPCs are off: this server was started without --admin-token-file"
            )
        if self._admin.allows(arrival.metadata):
            return
        if self._auth is not None and self._auth.allows(arrival.metadata):
            raise PermissionDenied(
                "a caller's token cannot make admin calls: send an admin token "
                "(one of the server's --admin-token-file)"
            )
        raise Unauthenticated(
            "missing or invalid admin token (metadata 'authorization: Bearer <admin token>')"
        )

    def _end(self, call: Call, kind: str) -> None:
        arrival = call.arrival
        # a unary call's request may have set its own class (tasks/running.py); a stream's
        # messages keep theirs to their lines
        priority = call.priority if arrival.stream else PRIORITY.get()
        if self.metrics is not None:
            seconds = time.perf_counter() - call.started
            self.metrics.call_ended(
                arrival.transport,
                arrival.rpc,
                call.code,
                seconds,
                stream=arrival.stream,
                status=call.status,
                priority=priority,
            )
        if call.span is not None and self.tracing is not None:
            if call.status is not None:
                call.span.set_attribute("http.response.status_code", call.status)
            self.tracing.call_ended(call.span, call.code, call.details)
        if self._access_log:
            fields = {"priority": priority, **call.totals.fields()}
            if kind == "stream":
                fields = {"messages": call.totals.messages, **fields}
            if call.status is not None:
                fields["status"] = call.status
            _log_line(kind, call, call.code, fields)


_CODE_NAMES: dict[int, str] = {}


def _code_name(code: int) -> str:
    """A google.rpc code number's name ("INVALID_ARGUMENT")."""
    if not _CODE_NAMES:
        from google.rpc import code_pb2

        _CODE_NAMES.update({v: k for k, v in code_pb2.Code.items()})
    return _CODE_NAMES.get(code, str(code))


def _bad_priority(given: str) -> InvalidArgument:
    shown = repr(given if len(given) <= 40 else given[:40] + "...")
    return InvalidArgument(f"metadata.{PRIORITY_KEY}", f"{shown} is not 'interactive' or 'bulk'")


def _bad_request_id(given: str, problem: str) -> InvalidArgument:
    shown = repr(given if len(given) <= 40 else given[:40] + "...")
    return InvalidArgument(f"metadata.{REQUEST_ID_KEY}", f"{shown} {problem}")


def _log_line(kind: str, call: Call, code: str, fields: dict[str, Any]) -> None:
    """One access-log line ("call", "stream", "stream message"); the log filter adds the
    call's request id (logs.py)."""
    arrival = call.arrival
    access_log.info(
        kind,
        extra={
            "fields": {
                "transport": arrival.transport,
                "rpc": arrival.rpc,
                "code": code,
                **fields,
                "peer": arrival.peer,
            }
        },
    )
