"""OpenAI-style HTTP beside gRPC, in the same process: the JSON shapes every SDK speaks.

    POST /v1/embeddings   OpenAI's request and response (input: a string, strings, or token
                          id arrays; model, dimensions, encoding_format float or base64)
    POST /v1/rerank       the Cohere / Jina shape (query, documents, top_n, return_documents);
                          /v2/rerank too, Cohere's v2 path
    GET  /v1/models       the heads this server serves, as OpenAI lists models
    GET  /health          200 while serving; 503 while loading or draining

Every request runs through the call pipeline gRPC calls run through (pipeline.py: bearer
tokens, request ids, --max-concurrent-calls counted over both, the access log, metrics and
spans continuing the caller's traceparent), on the gRPC server's Core: the same scheduler
(HTTP and gRPC rows share batches), heads and request limits. An error is OpenAI's JSON
(`{"error": {"message", "type", "param", "code"}}`) with the HTTP status its row of the
error table gives: 400 bad input, 401 no valid token, 404 no such model, 413 over a size
limit, 429 too many calls or a full queue (with `retry-after`), 503 loading or draining.
A POST's body must be JSON (`content-type: application/json`, or none): a text/plain or
form body, which a browser may post cross-site without asking, is refused with 400.
http_server.py serves this app with uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from headserve.v1 import errors as table

from ..call_info import CURRENT, HTTP_HEAD_VERSIONS_KEY, REQUEST_ID_KEY, current_request_id
from ..calls.connections import Connections
from ..calls.pipeline import Arrival, Pipeline
from ..calls.pipeline import Call as Running
from ..calls.status import http_error
from ..core.engine import Core
from ..errors import (
    HeadserveError,
    InvalidArgument,
    RequestTimeout,
    TooLarge,
    Unavailable,
)
from ..tasks import Route as TaskRoute
from ..tasks import Task
from ..tasks.wire import Call

if TYPE_CHECKING:
    from ..calls.state import ServerState
    from ..jobs.openai_api import JobRoute

log = logging.getLogger(__name__)
INLINE_JSON = 64 * 1024  # bytes of JSON parsed on the event loop (about 0.3 ms); more on a thread


class Cancelled(HeadserveError):
    """The caller went away: nobody reads this answer (nginx's 499)."""

    kind = table.CANCELLED


def error_response(exc: BaseException, request_id: str | None) -> JSONResponse:
    """OpenAI's error JSON for `exc`, with its HTTP status; anything not ours is a bug: 500."""
    status, body = http_error(exc)
    headers = {REQUEST_ID_KEY: request_id} if request_id else {}
    if status == 429:
        headers["retry-after"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIHttp:
    """The routes, over the gRPC server's state (its Core once the model is loaded); each
    request runs through the call pipeline the gRPC calls run through."""

    def __init__(
        self,
        state: ServerState,
        pipeline: Pipeline,
        tasks: Sequence[Task],
        *,
        body_timeout: float = Connections.http_body_timeout,
        max_json_values: int = Connections.http_max_json_values,
        jobs: Sequence[JobRoute] = (),
    ) -> None:
        self._state = state
        self._jobs = tuple(jobs)
        self._body_timeout = body_timeout
        self._max_json_values = max_json_values
        self._pipeline = pipeline
        self._tasks = tuple(tasks)
        self._limits = state.request_limits
        self.started = int(time.time())

    def app(self) -> Starlette:
        """The tasks' routes (their descriptions name them), then the server's own."""
        own = (("GET", "/v1/models", self._models), ("GET", "/health", self._health))
        routes = [
            (r.method, r.path, self._answering(r), False) for task in self._tasks for r in task.http
        ]
        routes += [(method, path, handle, False) for method, path, handle in own]
        routes += [(r.method, r.path, r.handle, r.raw) for r in self._jobs]
        paths = ", ".join(dict.fromkeys(path for _, path, _, _ in routes))

        async def not_found(request: Request, exc: Exception) -> Response:
            return _not_found(request, paths)

        return Starlette(
            routes=[
                Route(path, self._endpoint(method, path, handle, raw), methods=[method])
                for method, path, handle, raw in routes
            ],
            exception_handlers={404: not_found, 405: _wrong_method},
        )

    def _answering(self, route: TaskRoute) -> Callable[[Request, Any], Awaitable[Any]]:
        async def handle(request: Request, body: Any) -> Any:
            return await route.answer(self._core(), body, Call.current(stream=False))

        return handle

    # --- one request through the call pipeline -------------------------------------------------

    def _endpoint(
        self,
        method: str,
        path: str,
        handle: Callable[[Request, Any], Awaitable[Any]],
        raw: bool = False,
    ) -> Callable[[Request], Awaitable[Response]]:
        """`raw`: the handler reads the request's body itself (an upload), and the call is not
        cancelled when the caller goes (its body is read by then)."""
        rpc = f"{method} {path}"
        health = path == "/health"

        async def endpoint(request: Request) -> Response:
            malformed: HeadserveError | None = None
            try:
                timeout = _timeout(request)
            except InvalidArgument as exc:
                timeout, malformed = None, exc
            # The body is read before the call is admitted, so that a body sent slowly holds
            # a connection (capped, timed) but never one of --max-concurrent-calls' places. A
            # body that cannot be read refuses the call as a malformed head does.
            body = None
            if request.method == "POST" and malformed is None and not raw:
                try:
                    body = await self._body(request)
                except HeadserveError as exc:
                    malformed = exc
            arrival = Arrival(
                "http",
                rpc,
                request.headers.items(),
                timeout,
                f"{request.client.host}:{request.client.port}" if request.client else "",
                health=health,
                public=health and self._pipeline.open_health,
                malformed=malformed,
            )

            async def work(call: Running) -> Response:
                if raw:
                    answer = await handle(request, None)
                else:
                    answer = await self._unless_gone(request, body, handle)
                response = answer if isinstance(answer, Response) else JSONResponse(answer)
                call.status = response.status_code
                return response

            try:
                response = await self._pipeline.unary(arrival, work)
                response.headers[REQUEST_ID_KEY] = current_request_id() or ""
            except Exception as exc:
                response = error_response(exc, current_request_id())
            info = CURRENT.get()
            if info is not None and info.heads:  # which versions of which heads answered
                response.headers[HTTP_HEAD_VERSIONS_KEY] = info.head_versions()
            metrics = self._pipeline.metrics
            if metrics is not None:
                metrics.http_requests.labels(path, str(response.status_code)).inc()
            return response

        return endpoint

    async def _unless_gone(
        self,
        request: Request,
        raw: bytearray | None,
        handle: Callable[[Request, Any], Awaitable[Any]],
    ) -> Any:
        """`handle(request, its JSON body)`, cancelled if the caller disconnects first: its
        rows leave the queue, as a cancelled gRPC call's do."""
        body = await self._parsed(raw) if raw is not None else None
        work = asyncio.ensure_future(handle(request, body))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            raise Cancelled("the caller disconnected before the answer")
        return work.result()

    def _core(self) -> Core:
        core = self._state.core
        if core is None:  # the pipeline admits no call before the model is loaded
            raise Unavailable("the model is still loading; retry shortly")
        return core

    async def _body(self, request: Request) -> bytearray:
        """The request's body, as JSON may be sent; one over the message limit is refused
        unread, one that comes too slowly is refused when --http-body-timeout passes."""
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind and not (kind == "application/json" or kind.endswith("+json")):
            # text/plain and form bodies are what a browser may post cross-site without asking
            raise InvalidArgument(
                "headers.content-type", f"{kind!r}: send the body as application/json"
            )
        limit = self._limits.max_message_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge("body", f"{int(declared):,} bytes, more than {limit:,}")
        body = bytearray()  # appended in place: a large body's chunks are not copied again
        try:
            async with asyncio.timeout(self._body_timeout):  # a trickled body holds a connection
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise TooLarge("body", f"more than {limit:,} bytes")
        except ClientDisconnect as exc:  # gone mid-body: nobody reads an answer (499)
            raise Cancelled("the caller disconnected before its body was read") from exc
        except TimeoutError as exc:
            raise RequestTimeout(
                f"the body did not arrive within {self._body_timeout:g} s "
                f"(--http-body-timeout); {len(body):,} bytes came"
            ) from exc
        return body

    async def _parsed(self, body: bytearray) -> dict[str, Any]:
        """The body's JSON object (a large body parsed off the event loop)."""
        # json.loads holds the GIL however it is run: a body of millions of small values (token
        # ids) would stall every call for as long. Its values are counted first (memchr-fast).
        values = body.count(b",") + 1 if len(body) > INLINE_JSON else 0
        if values > self._max_json_values:
            raise TooLarge(
                "body",
                f"holds about {values:,} JSON values, more than {self._max_json_values:,} "
                "(--http-max-json-values); send fewer inputs or token ids per request",
            )
        try:
            # a large body is parsed off the event loop, where it would hold every other call
            parsed = (
                json.loads(body)
                if len(body) <= INLINE_JSON
                else await asyncio.to_thread(json.loads, body)
            )
        except RecursionError as exc:
            raise InvalidArgument("body", "is nested too deeply") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument("body", f"is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InvalidArgument("body", "must be a JSON object")
        if _ESCAPED_SURROGATE.search(body):  # only JSON's escapes can carry one
            _refuse_lone_surrogates(parsed, "")
        return parsed

    # --- the routes ----------------------------------------------------------------------------

    async def _health(self, request: Request, body: None) -> Response:
        if self._state.draining.is_set():
            return JSONResponse({"status": "draining"}, status_code=503)
        if self._state.core is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def _models(self, request: Request, body: None) -> dict[str, Any]:
        core = self._core()
        data = [
            {
                "id": name,
                "object": "model",
                "created": self.started,
                "owned_by": "headserve",
                "task": served.plugin.plugin.task,
            }
            for name, served in core.registry.heads.items()
            if core.registry.usable(served)
        ]
        return {"object": "list", "data": data}


async def _disconnected(request: Request) -> None:
    """Once the body is read, the next ASGI message is the caller's disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# OpenAI's SDKs send their read timeout, in seconds: past it the caller has given up, so it is
# the request's deadline, as a gRPC call's (rows still queued then never reach the model).
TIMEOUT_HEADER = "x-stainless-read-timeout"


# "\ud800".."\udfff" in a JSON body; json.loads joins a valid pair into one character
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_lone_surrogates(value: Any, path: str) -> None:
    """InvalidArgument naming the first string of `value` (by its JSON path: input[1]) that
    holds a lone surrogate: no tokenizer reads it (gRPC's UTF-8 cannot carry one)."""
    if isinstance(value, str):
        lone = _SURROGATE.search(value)
        if lone is not None:
            raise InvalidArgument(
                path or "body",
                f"has a lone surrogate (U+{ord(lone.group()):04X}) at character "
                f"{lone.start()}: not text any tokenizer reads; send valid Unicode",
            )
    elif isinstance(value, dict):
        for key, inner in value.items():
            _refuse_lone_surrogates(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _refuse_lone_surrogates(inner, f"{path}[{index}]")


def _timeout(request: Request) -> float | None:
    """The seconds the caller allows, if it sent them: the call's deadline (pipeline.py)."""
    given = request.headers.get(TIMEOUT_HEADER)
    if given is None:
        return None
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgument(f"headers.{TIMEOUT_HEADER}", f"{given!r} is not a positive number")
    return seconds


def _not_found(request: Request, paths: str) -> Response:
    body = {
        "error": {
            "message": f"no route {request.url.path}: this server serves {paths}",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }
    return JSONResponse(body, status_code=404)


async def _wrong_method(request: Request, exc: Exception) -> Response:
    body = {
        "error": {
            "message": f"{request.method} is not allowed on {request.url.path}",
            "type": "invalid_request_error",
            "param": None,
            "code": "method_not_allowed",
        }
    }
    return JSONResponse(body, status_code=405)
