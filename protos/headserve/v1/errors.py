"""The contract's error table: every kind of error a headserve server answers, said once.

Each kind gives its gRPC status code, the `google.rpc.ErrorInfo` reason it carries (domain
"headserve"), its HTTP status and OpenAI error `type` on the OpenAI-style HTTP endpoint, and
whether a client may send the same call again. The server maps its errors through this table
(on gRPC and on HTTP), and the Python client's retry rule reads it; docs/operations.md says
the same in words, for clients in other languages. A kind's codes never change meaning: a
new kind is a new row.

Hand-written, beside the generated messages because it is part of the contract (no torch, no
grpc: the client-only install has it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "ErrorKind", "by_reason", "markdown"]


@dataclass(frozen=True)
class ErrorKind:
    name: str
    grpc: str  # the grpc.StatusCode name, e.g. "INVALID_ARGUMENT"
    reason: str  # ErrorInfo.reason
    http: int  # the HTTP status on the OpenAI-style endpoint
    http_type: str  # the OpenAI error JSON's "type"
    retry: bool  # the same call, sent again, may succeed (the server was busy or not ready)
    meaning: str


INVALID_ARGUMENT = ErrorKind(
    "invalid_argument",
    "INVALID_ARGUMENT",
    "INVALID_ARGUMENT",
    400,
    "invalid_request_error",
    False,
    "bad input or option; BadRequest names the field (items[i].text, options.top_k)",
)
TOO_LARGE = ErrorKind(
    "too_large",
    "INVALID_ARGUMENT",
    "INVALID_ARGUMENT",
    413,
    "invalid_request_error",
    False,
    "over one of the server's size limits (--max-request-items, --max-item-chars...)",
)
HEAD_NOT_FOUND = ErrorKind(
    "head_not_found",
    "NOT_FOUND",
    "HEAD_NOT_FOUND",
    404,
    "invalid_request_error",
    False,
    "no head of that name and task is served",
)
JOB_NOT_FOUND = ErrorKind(
    "job_not_found",
    "NOT_FOUND",
    "JOB_NOT_FOUND",
    404,
    "invalid_request_error",
    False,
    "no batch job or file of that id on this server",
)
HEAD_NOT_USABLE = ErrorKind(
    "head_not_usable",
    "FAILED_PRECONDITION",
    "HEAD_NOT_USABLE",
    400,
    "invalid_request_error",
    False,
    "the head is served but cannot answer, e.g. its weights are untrained",
)
UNAUTHENTICATED = ErrorKind(
    "unauthenticated",
    "UNAUTHENTICATED",
    "UNAUTHENTICATED",
    401,
    "authentication_error",
    False,
    "no valid bearer token",
)
PERMISSION_DENIED = ErrorKind(
    "permission_denied",
    "PERMISSION_DENIED",
    "PERMISSION_DENIED",
    403,
    "permission_error",
    False,
    "a valid token that does not allow this call: a caller's token on an admin RPC",
)
ADMIN_OFF = ErrorKind(
    "admin_off",
    "UNIMPLEMENTED",
    "ADMIN_OFF",
    501,
    "not_implemented",
    False,
    "an admin RPC on a server started without admin tokens (--admin-token-file)",
)
JOBS_OFF = ErrorKind(
    "jobs_off",
    "UNIMPLEMENTED",
    "JOBS_OFF",
    501,
    "not_implemented",
    False,
    "a batch job call on a server without a jobs folder (--jobs-dir), or on Ray Serve",
)
HEAD_EXISTS = ErrorKind(
    "head_exists",
    "ALREADY_EXISTS",
    "HEAD_EXISTS",
    409,
    "invalid_request_error",
    False,
    "a head of that name is served already: load it with replace, or pick another name",
)
HEAD_STORE_FAILED = ErrorKind(
    "head_store_failed",
    "FAILED_PRECONDITION",
    "HEAD_STORE_FAILED",
    507,
    "server_error",
    False,
    "a head change the head store (--head-store) could not record (read-only, full): "
    "nothing changed",
)
OVERLOADED = ErrorKind(
    "overloaded",
    "RESOURCE_EXHAUSTED",
    "OVERLOADED",
    429,
    "rate_limit_error",
    True,
    "the queue or a concurrency limit is full; retry after a short wait",
)
UNAVAILABLE = ErrorKind(
    "unavailable",
    "UNAVAILABLE",
    "UNAVAILABLE",
    503,
    "service_unavailable",
    True,
    "the model is still loading, or the server is draining",
)
DEADLINE_EXCEEDED = ErrorKind(
    "deadline_exceeded",
    "DEADLINE_EXCEEDED",
    "DEADLINE_EXCEEDED",
    504,
    "timeout",
    False,
    "the call's deadline passed before its rows reached the model",
)
REQUEST_TIMEOUT = ErrorKind(
    "request_timeout",
    "DEADLINE_EXCEEDED",
    "REQUEST_TIMEOUT",
    408,
    "timeout",
    True,
    "HTTP only: the request's body did not arrive within --http-body-timeout",
)
OUT_OF_MEMORY = ErrorKind(
    "out_of_memory",
    "RESOURCE_EXHAUSTED",
    "OUT_OF_MEMORY",
    413,
    "invalid_request_error",
    False,
    "one row does not fit in the device's memory even alone",
)
HEAD_FAILED = ErrorKind(
    "head_failed",
    "INTERNAL",
    "HEAD_FAILED",
    500,
    "server_error",
    False,
    "a head raised while computing: a bug in that head (or a model it cannot run)",
)
CANCELLED = ErrorKind(
    "cancelled",
    "CANCELLED",
    "CANCELLED",
    499,
    "cancelled",
    False,
    "the caller went away before the answer",
)
INTERNAL = ErrorKind(
    "internal",
    "INTERNAL",
    "INTERNAL",
    500,
    "server_error",
    False,
    "a bug in the server",
)

KINDS: tuple[ErrorKind, ...] = (
    INVALID_ARGUMENT,
    TOO_LARGE,
    HEAD_NOT_FOUND,
    JOB_NOT_FOUND,
    HEAD_NOT_USABLE,
    UNAUTHENTICATED,
    PERMISSION_DENIED,
    ADMIN_OFF,
    JOBS_OFF,
    HEAD_EXISTS,
    HEAD_STORE_FAILED,
    OVERLOADED,
    UNAVAILABLE,
    DEADLINE_EXCEEDED,
    REQUEST_TIMEOUT,
    OUT_OF_MEMORY,
    HEAD_FAILED,
    CANCELLED,
    INTERNAL,
)
_BY_REASON: dict[str, ErrorKind] = {}
for _kind in KINDS:
    _BY_REASON.setdefault(_kind.reason, _kind)


def by_reason(reason: str) -> ErrorKind | None:
    """The kind a headserve `ErrorInfo.reason` names (INVALID_ARGUMENT: the first of its two,
    which differ only in their HTTP status), or None for a reason headserve never sends."""
    return _BY_REASON.get(reason)


def markdown() -> str:
    """The table in words (docs/operations.md holds it; a test keeps the two equal)."""
    lines = [
        "| reason | gRPC code | HTTP | retried by the client | meaning |",
        "|---|---|---|---|---|",
    ]
    for k in KINDS:
        retry = "yes" if k.retry else "no"
        lines.append(
            f"| `{k.reason}` | {k.grpc} | {k.http} `{k.http_type}` | {retry} | {k.meaning} |"
        )
    return "\n".join(lines) + "\n"
