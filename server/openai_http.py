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
http_server.py serves this app with uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from headserve.plugins.tasks import EncodeOptions, TextItem
from headserve.v1 import errors as table

from .call_info import REQUEST_ID_KEY, current_request_id
from .core import Core
from .errors import HeadNotFound, HeadserveError, InvalidArgument, TooLarge, Unavailable
from .pipeline import Arrival, Call, Pipeline, current
from .ranking import rerank

if TYPE_CHECKING:
    from .app import ServerState

log = logging.getLogger(__name__)


class Cancelled(HeadserveError):
    """The caller went away: nobody reads this answer (nginx's 499)."""

    kind = table.CANCELLED


def error_response(exc: BaseException, request_id: str | None) -> JSONResponse:
    """OpenAI's error JSON for `exc`, with its HTTP status; anything not ours is a bug: 500."""
    row = exc.kind if isinstance(exc, HeadserveError) else table.INTERNAL
    status, kind = row.http, row.http_type
    if isinstance(exc, HeadserveError):
        message, code = exc.message, exc.reason.lower()
    else:
        log.error("internal error", exc_info=exc)
        message, code = f"internal error: {exc!r}", "internal"
    param = exc.field if isinstance(exc, InvalidArgument) else None
    if isinstance(exc, HeadNotFound):
        param, code = "model", "model_not_found"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {REQUEST_ID_KEY: request_id} if request_id else {}
    if status == 429:
        headers["retry-after"] = "1"
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIHttp:
    """The routes, over the gRPC server's state (its Core once the model is loaded); each
    request runs through the call pipeline the gRPC calls run through."""

    def __init__(self, state: ServerState, pipeline: Pipeline) -> None:
        self._state = state
        self._pipeline = pipeline
        self._limits = state.request_limits
        self.started = int(time.time())

    def app(self) -> Starlette:
        def route(
            path: str, handle: Callable[[Request, Any], Awaitable[Any]], method: str
        ) -> Route:
            return Route(path, self._endpoint(method, path, handle), methods=[method])

        return Starlette(
            routes=[
                route("/v1/embeddings", self._embeddings, "POST"),
                route("/v1/rerank", self._rerank, "POST"),
                route("/v2/rerank", self._rerank, "POST"),  # Cohere's v2 path, the same shape
                route("/v1/models", self._models, "GET"),
                route("/health", self._health, "GET"),
            ],
            exception_handlers={404: _not_found, 405: _wrong_method},
        )

    # --- one request through the call pipeline -------------------------------------------------

    def _endpoint(
        self, method: str, path: str, handle: Callable[[Request, Any], Awaitable[Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        rpc = f"{method} {path}"
        health = path == "/health"

        async def endpoint(request: Request) -> Response:
            try:
                timeout, malformed = _timeout(request), None
            except InvalidArgument as exc:
                timeout, malformed = None, exc
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

            async def work(call: Call) -> Response:
                body = await self._unless_gone(request, handle)
                response: Response = body if isinstance(body, Response) else JSONResponse(body)
                call.status = response.status_code
                return response

            try:
                response = await self._pipeline.unary(arrival, work)
                response.headers[REQUEST_ID_KEY] = current_request_id() or ""
            except Exception as exc:
                response = error_response(exc, current_request_id())
            metrics = self._pipeline.metrics
            if metrics is not None:
                metrics.http_requests.labels(path, str(response.status_code)).inc()
            return response

        return endpoint

    async def _unless_gone(
        self, request: Request, handle: Callable[[Request, Any], Awaitable[Any]]
    ) -> Any:
        """`handle(request, its JSON body)`, cancelled if the caller disconnects first: its
        rows leave the queue, as a cancelled gRPC call's do."""
        body = await self._json(request) if request.method == "POST" else None
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

    async def _json(self, request: Request) -> dict[str, Any]:
        """The request's JSON object; a body over the message limit is refused unread."""
        limit = self._limits.max_message_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge("body", f"{int(declared):,} bytes, more than {limit:,}")
        body = bytearray()  # appended in place: a large body's chunks are not copied again
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise TooLarge("body", f"more than {limit:,} bytes")
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument("body", f"is not JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InvalidArgument("body", "must be a JSON object")
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

    async def _embeddings(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        core = self._core()
        items = self._inputs(core, body.get("input"))
        model = _optional(body, "model", str)
        head = core.registry.resolve("encode", model or None)
        encoding = _optional(body, "encoding_format", str) or "float"
        if encoding not in ("float", "base64"):
            raise InvalidArgument("encoding_format", f"{encoding!r}: choose float or base64")
        dimensions = _optional(body, "dimensions", int) or 0
        if "dimensions" in body and dimensions < 1:
            raise InvalidArgument("dimensions", f"must be at least 1, got {body['dimensions']}")
        # OpenAI's shortened vectors are unit length: a head that normalises normalises them
        normalize = bool(getattr(head, "default_normalize", False)) if dimensions else None
        options = EncodeOptions(dimensions=dimensions, normalize=normalize)
        try:
            outcome = await core.run(
                "encode", [head.name], items, options, deadline=current().deadline
            )
        except InvalidArgument as exc:  # an item's field, named as OpenAI's input
            raise _as_input(exc) from exc
        data = []
        for index, (embedding,) in enumerate(outcome.results):
            if embedding.vector is None:
                raise InvalidArgument(
                    "model",
                    f"head {head.name!r} returns sparse or per-token vectors, not one vector "
                    "per input: call gRPC Encode for those",
                )
            vector = np.asarray(embedding.vector, dtype="<f4")
            value: Any = (
                base64.b64encode(vector.tobytes()).decode("ascii")
                if encoding == "base64"
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = outcome.input_tokens
        current().count(len(items), tokens)
        return {
            "object": "list",
            "data": data,
            "model": head.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _inputs(self, core: Core, given: Any) -> list[TextItem]:
        """OpenAI's `input`: a string, a list of strings, a list of token ids, or a list of
        such lists. Token ids are this backbone's own, read back into text."""
        if isinstance(given, str):
            texts: list[Any] = [given]
        elif isinstance(given, list) and given and all(_is_int(t) for t in given):
            texts = [given]  # one token array
        elif isinstance(given, list):
            texts = given
        else:
            raise InvalidArgument("input", "give a string, a list of strings or of token arrays")
        if not texts:
            raise InvalidArgument("input", "is empty: send at least one input")
        if len(texts) > self._limits.max_request_items:
            raise TooLarge(
                "input",
                f"{len(texts)} inputs, more than this server takes in one request "
                f"({self._limits.max_request_items}, --max-request-items); split them",
            )
        return [TextItem(self._text(core, index, t)) for index, t in enumerate(texts)]

    def _text(self, core: Core, index: int, given: Any) -> str:
        if isinstance(given, str):
            return given
        tokenizer = core.backbone.tokenizer
        if not isinstance(given, list) or not given or not all(_is_int(t) for t in given):
            raise InvalidArgument(
                f"input[{index}]", "must be a string or a non-empty array of token ids"
            )
        if tokenizer is None:
            raise InvalidArgument(f"input[{index}]", "this backbone reads images, not tokens")
        vocabulary = len(tokenizer)
        for position, token in enumerate(given):
            if not 0 <= token < vocabulary:
                raise InvalidArgument(
                    f"input[{index}][{position}]",
                    f"token id {token} is outside this model's vocabulary (0..{vocabulary - 1})",
                )
        return str(tokenizer.decode(given, skip_special_tokens=True))

    async def _rerank(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        core = self._core()
        query = body.get("query")
        if not isinstance(query, str):
            raise InvalidArgument("query", "must be a string")
        documents = _documents(body.get("documents"))
        if len(documents) > self._limits.max_request_items:
            raise TooLarge(
                "documents",
                f"{len(documents)} documents, more than this server takes in one request "
                f"({self._limits.max_request_items}, --max-request-items); split them",
            )
        top_n = _optional(body, "top_n", int)
        if top_n is not None and top_n < 1:
            raise InvalidArgument("top_n", f"must be at least 1, got {top_n}")
        return_documents = _optional(body, "return_documents", bool) or False
        truncate = _optional(body, "truncate", bool) or False
        ranking = await rerank(
            core,
            query,
            documents,
            head=_optional(body, "model", str) or None,
            truncate=truncate,
            deadline=current().deadline,
            wait_for_room=False,
        )
        kept = ranking.order[:top_n] if top_n else ranking.order
        results = []
        for index, score in kept:
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if return_documents:
                result["document"] = {"text": documents[index]}
            results.append(result)
        tokens = ranking.outcome.input_tokens
        current().count(len(documents), tokens)
        return {
            "id": current_request_id(),
            "model": ranking.head,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


async def _disconnected(request: Request) -> None:
    """Once the body is read, the next ASGI message is the caller's disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _as_input(exc: InvalidArgument) -> InvalidArgument:
    """`items[3].text` named as `input[3]`; other fields as they are."""
    if not exc.field.startswith("items"):
        return exc
    field = "input" + exc.field.removeprefix("items").removesuffix(".text")
    return type(exc)(field, exc.description, item=exc.item)


# OpenAI's SDKs send their read timeout, in seconds: past it the caller has given up, so it is
# the request's deadline, as a gRPC call's (rows still queued then never reach the model).
TIMEOUT_HEADER = "x-stainless-read-timeout"


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(body: dict[str, Any], name: str, kind: type) -> Any:
    """`body[name]` if it is of `kind` (an integral float counts as an int); None if absent
    or null; else InvalidArgument naming it."""
    value = body.get(name)
    if value is None:
        return None
    if kind is int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise InvalidArgument(name, f"must be {'an' if kind is int else 'a'} {kind.__name__}")


def _documents(given: Any) -> list[str]:
    """Cohere's documents (strings) or Jina's and Cohere v1's ({"text": ...} objects)."""
    if not isinstance(given, list) or not given:
        raise InvalidArgument("documents", "give a non-empty list of strings")
    documents = []
    for index, document in enumerate(given):
        if isinstance(document, dict) and isinstance(document.get("text"), str):
            document = document["text"]
        if not isinstance(document, str):
            raise InvalidArgument(f"documents[{index}]", 'must be a string or {"text": ...}')
        documents.append(document)
    return documents


async def _not_found(request: Request, exc: Exception) -> Response:
    body = {
        "error": {
            "message": f"no route {request.url.path}: this server serves /v1/embeddings, "
            "/v1/rerank (and /v2/rerank), /v1/models and /health",
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
