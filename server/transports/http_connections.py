"""What one HTTP connection may take: uvicorn's h11 protocol, with the limits uvicorn lacks.

uvicorn bounds neither how many connections it holds nor how long a request's head may take
to arrive, and its httptools parser reads a head of any size. So the HTTP endpoint runs on
uvicorn's h11 protocol (h11 refuses a head over `--http-max-header-bytes`), subclassed here
for the rest, each checked at the connection before any call begins:

- at most `cap` connections at once: one more is answered 503 and closed at once, so that
  its file descriptor is free again and /metrics, gRPC and the model's files keep theirs
  (the cap stays below the process's RLIMIT_NOFILE, see `connection_cap`);
- a request's head must be complete within `--http-header-timeout` of the connection's
  opening or the previous answer (slowloris), else 408 and the connection is closed; an idle
  kept-alive connection is closed after `--http-keepalive-timeout` (uvicorn's own timer);
- a head over the byte limit is 431 (uvicorn answers every parse error 400): h11 refuses one
  still arriving past it, `HeadLimits` (around the app) one that came whole in one read, and
  one of more than `--http-max-headers` fields.

Each refusal counts in headserve_http_refused_total{reason}.

hypercorn would give the head timeout and the 431, but no way to hold a connection cap at
accept time; uvicorn takes its protocol as a class, which is that way.
"""

from __future__ import annotations

import json
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

NOFILE_RESERVE = 64  # descriptors kept apart from HTTP for gRPC, /metrics, model files, logs


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the process may open fewer files: HTTP connections may take at
    most three quarters of RLIMIT_NOFILE, and never the last NOFILE_RESERVE of them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(1, min(soft * 3 // 4, soft - NOFILE_RESERVE))
    if room < wanted:
        log.info(
            "HTTP connections capped at %d, below --http-max-connections (%d): the process "
            "may open %d files (RLIMIT_NOFILE), and gRPC and /metrics keep the rest",
            room,
            wanted,
            soft,
        )
    return min(wanted, room)


@dataclass(frozen=True)
class ConnectionLimits:
    cap: int  # connections open at once
    header_timeout: float  # seconds from opening (or the last answer) to a complete head
    max_header_bytes: int  # of a request's head (h11's max_incomplete_event_size)
    refused: Callable[[str], None]  # counts a refusal by its reason (metrics.HTTP_REFUSALS)


def error_json(status: int, message: str, code: str) -> bytes:
    """OpenAI's error JSON, as the endpoint's own errors are written."""
    kind = "invalid_request_error" if status < 500 else "service_unavailable"
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def refusal(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    body = error_json(status, message, code)
    retry = "retry-after: 1\r\n" if status == 503 else ""
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{retry}connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Parser(h11.Connection):
    """h11's connection, keeping the status its last parse error hinted (431: head too long)."""

    hint = 400

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.hint = exc.error_status_hint
            raise


class LimitedH11Protocol(H11Protocol):
    """One HTTP connection under `limits` (a subclass per server binds them: `bound`)."""

    limits: ClassVar[ConnectionLimits]

    @classmethod
    def bound(cls, limits: ConnectionLimits) -> type[LimitedH11Protocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _Parser(h11.SERVER, self.limits.max_header_bytes)
        self._head_timer: Any = None
        self._refused = False

    def connection_made(self, transport: Any) -> None:
        if len(self.connections) >= self.limits.cap:
            self._refused = True
            self.limits.refused("connections_full")
            transport.write(
                refusal(503, "the server holds all the HTTP connections it may", "busy")
            )
            transport.close()  # its descriptor is free as soon as the answer is written
            return
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if not self._refused:  # a refused connection never became uvicorn's
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_request():
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if not self.transport.is_closing() and not self._in_request():
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        if self.conn.hint != 431:  # type: ignore[attr-defined]
            super().send_400_response(msg)
            return
        self.limits.refused("headers_too_large")
        self._close_with(
            431,
            f"the request's head is over {self.limits.max_header_bytes:,} bytes "
            "(--http-max-header-bytes)",
            "headers_too_large",
        )

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._in_request():
            return
        self.limits.refused("header_timeout")
        self._close_with(
            408,
            f"the request's head did not arrive within {self.limits.header_timeout:g} s "
            "(--http-header-timeout)",
            "header_timeout",
        )

    def _close_with(self, status: int, message: str, code: str) -> None:
        self.transport.write(refusal(status, message, code))
        self.transport.close()


class HeadLimits:
    """The ASGI app, refusing with 431, before it reaches a route, a request of more than
    `most_fields` header fields or a head of more than `most_bytes`. (h11's own limit bounds
    only a head still arriving: one that comes whole in a single read passes it.)"""

    def __init__(
        self, app: Any, most_fields: int, most_bytes: int, refused: Callable[[str], None]
    ) -> None:
        self.app = app
        self.most_fields = most_fields
        self.most_bytes = most_bytes
        self.refused = refused

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                code, message = refusal
                self.refused(code)
                await _answer(send, 431, message, code)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Any) -> tuple[str, str] | None:
        fields = scope["headers"]
        if len(fields) > self.most_fields:
            return "too_many_headers", (
                f"{len(fields)} header fields, more than {self.most_fields} (--http-max-headers)"
            )
        # the request line and each "name: value\r\n", as sent
        size = len(scope["raw_path"]) + len(scope["query_string"]) + 16
        size += sum(len(name) + len(value) + 4 for name, value in fields)
        if size > self.most_bytes:
            return "headers_too_large", (
                f"the request's head is over {self.most_bytes:,} bytes (--http-max-header-bytes)"
            )
        return None


async def _answer(send: Any, status: int, message: str, code: str) -> None:
    body = error_json(status, message, code)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
