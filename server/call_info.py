"""Which call the code is serving: its request id and RPC, wherever the code runs.

The gRPC call interceptor (interceptor.py), the HTTP endpoint (openai_http.py) and the Ray
Serve replica (ray_serve.py) set `CURRENT` for each call before any of its code runs;
everything the call's task does, and every task or thread it starts (a stream's requests, a
head's prepare and finish), sees it. Error details, log lines and spans read it from here
instead of having it passed down.
A model worker serves a batch of rows from several calls: `BATCH` holds their request ids
while it computes, so its log lines can name them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class CallInfo:
    request_id: str
    rpc: str  # "headserve.v1.Encoder/Encode"


CURRENT: ContextVar[CallInfo | None] = ContextVar("headserve_call", default=None)
BATCH: ContextVar[tuple[str, ...]] = ContextVar("headserve_batch_request_ids", default=())


def current_request_id() -> str | None:
    call = CURRENT.get()
    return call.request_id if call is not None else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def check_request_id(value: str) -> str | None:
    """Why `value` cannot be a request id (None: it can): at most 128 printable ASCII
    characters, no spaces, so it is safe in a log line and in any tracing backend."""
    if not value:
        return "is empty"
    if len(value) > MAX_REQUEST_ID_CHARS:
        return f"is {len(value)} characters, more than {MAX_REQUEST_ID_CHARS}"
    if not all("!" <= char <= "~" for char in value):
        return "must be printable ASCII without spaces"
    return None


def begin_call(
    metadata: Iterable[tuple[str, Any]] | None, rpc: str
) -> tuple[CallInfo, InvalidArgument | None]:
    """Set CURRENT for a call starting now: the caller's x-request-id when it is a good one,
    else a new id; with it, the error that refuses a bad one (None: nothing to refuse).
    Both transports (the interceptor, the Ray Serve replica) start calls here."""
    given = ""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            given = value
    problem = check_request_id(given) if given else None
    call = CallInfo(given if given and problem is None else new_request_id(), rpc)
    CURRENT.set(call)
    if problem is None:
        return call, None
    shown = repr(given if len(given) <= 40 else given[:40] + "...")
    return call, InvalidArgument(f"metadata.{REQUEST_ID_KEY}", f"{shown} {problem}")
