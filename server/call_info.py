"""Which call the code is serving: its request id, RPC, deadline and class of work, wherever
the code runs.

The call pipeline (pipeline.py), which every transport runs its calls through, sets
`CURRENT` for each call before any of its code runs;
everything the call's task does, and every task or thread it starts (a stream's requests, a
head's prepare and finish), sees it. Error details, log lines and spans read it from here
instead of having it passed down.
A model worker serves a batch of rows from several calls: `BATCH` holds their request ids
while it computes, so its log lines can name them.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
RequestIdIn = Literal["initial", "trailing"]  # where a unary gRPC call's id goes back
REQUEST_ID_IN: tuple[RequestIdIn, ...] = ("initial", "trailing")


Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "bulk")
PRIORITY_KEY = "x-priority"  # gRPC metadata and HTTP header: a call's class of work


HEAD_VERSIONS_KEY = "headserve-head-versions"  # gRPC metadata; HTTP: x-headserve-head-versions
HTTP_HEAD_VERSIONS_KEY = "x-headserve-head-versions"


@dataclass(frozen=True, slots=True)
class CallInfo:
    request_id: str
    rpc: str  # "headserve.v1.Encoder/Encode"
    deadline: float | None = None  # on time.perf_counter(), the scheduler's clock
    heads: dict[str, str] = field(default_factory=dict)  # the heads that answered: versions

    def head_versions(self) -> str:
        """The heads that answered, as the response says it: "name=version,name=version"."""
        return ",".join(f"{name}={version}" for name, version in self.heads.items())


CURRENT: ContextVar[CallInfo | None] = ContextVar("headserve_call", default=None)
# the class of the work the running code does: the call's `x-priority`, or a request
# message's own `priority` (set for that message's answer alone)
PRIORITY: ContextVar[Priority] = ContextVar("headserve_priority", default="interactive")
BATCH: ContextVar[tuple[str, ...]] = ContextVar("headserve_batch_request_ids", default=())


def answered_by(name: str, version: str) -> None:
    """Note that head `name` at `version` answers the current call (for its response)."""
    call = CURRENT.get()
    if call is not None:
        call.heads[name] = version


def current_request_id() -> str | None:
    call = CURRENT.get()
    return call.request_id if call is not None else None


def current_priority() -> Priority:
    return PRIORITY.get()


def check_priority(value: str) -> Priority | None:
    """`value` as a class of work ("interactive", "bulk", any case); None: not one."""
    lowered = value.strip().lower()
    for priority in PRIORITIES:
        if lowered == priority:
            return priority
    return None


def bulk_share(most: int) -> int:
    """How much of a limit (calls in progress, queued rows) bulk work may take: three
    quarters; the rest is kept for interactive work, so refusals under overload hit bulk
    work first."""
    return max(1, most - most // 4)


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
