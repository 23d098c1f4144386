"""The client's error hierarchy, and the one place where gRPC statuses become exceptions.

Every call raises a subclass of :class:`HeadserveError`; a stream batch that fails carries one in
its :class:`~headserve.client.StreamResult`. There is one subclass per status code a caller
handles differently, chosen by :func:`from_status` / :func:`from_rpc_error`:

=====================  ============================  =======================================
status code            class                         what it means at headserve
=====================  ============================  =======================================
INVALID_ARGUMENT       :class:`InvalidArgumentError`  bad input; ``.field`` / ``.item`` say where
NOT_FOUND              :class:`NotFoundError`         unknown head
FAILED_PRECONDITION    :class:`FailedPreconditionError`  head exists but is not usable
RESOURCE_EXHAUSTED     :class:`ResourceExhaustedError`   server overloaded (retried)
UNAVAILABLE            :class:`UnavailableError`      not ready, draining, unreachable (retried)
DEADLINE_EXCEEDED      :class:`DeadlineExceededError` the call's timeout passed
UNAUTHENTICATED        :class:`UnauthenticatedError`   no valid credentials, e.g. a bad token
PERMISSION_DENIED      :class:`PermissionDeniedError`  credentials not allowed this call
ALREADY_EXISTS         :class:`AlreadyExistsError`    a head of that name is served (admin)
UNIMPLEMENTED          :class:`UnimplementedError`    not served here, e.g. admin RPCs off
INTERNAL               :class:`InternalError`         a server bug
anything else          :class:`HeadserveError`
=====================  ============================  =======================================

Only the two marked "retried" are retried (unary calls only). A failed TLS handshake (a server
certificate not trusted, a client certificate refused) never reaches a method: gRPC reports it
as UNAVAILABLE.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ._call_meta import request_id_in

__all__ = [
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "HeadserveError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "AlreadyExistsError",
    "UnimplementedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
    "from_status",
]

_ITEM_FIELD = re.compile(r"^items\[(\d+)\]")

# The detail messages a headserve server may attach; anything else stays a packed Any.
_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.RequestInfo,
)

_M = TypeVar("_M", bound=Message)

_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, from a ``google.rpc.BadRequest`` detail."""

    field: str
    """Path of the field, e.g. ``items[3].text`` or ``options.top_k``."""
    description: str

    @property
    def item(self) -> int | None:
        """Index of the offending item when the field is ``items[N]...``, else ``None``."""
        match = _ITEM_FIELD.match(self.field)
        return int(match.group(1)) if match else None


class HeadserveError(Exception):
    """Base of every error the client raises for a failed call.

    Attributes:
        code: the ``grpc.StatusCode`` of the failure.
        message: the server's (or gRPC's) message.
        details: the status detail messages, unpacked (``google.rpc.BadRequest``,
            ``ErrorInfo``, ``RetryInfo``...); unknown ones stay ``google.protobuf.Any``.
        reason: ``ErrorInfo.reason`` when the server sent one, else ``""``.
        metadata: ``ErrorInfo.metadata`` (read-only), empty without one.
        retry_delay: seconds from ``RetryInfo.retry_delay``, or ``None``.
        request_id: the failed call's request id (``ErrorInfo.metadata["request_id"]``, or the
            call's ``x-request-id`` metadata): name it when reporting the failure. ``None``
            when the call never reached a headserve server.
    """

    code: grpc.StatusCode
    message: str
    details: tuple[Message, ...]
    reason: str
    metadata: Mapping[str, str]
    retry_delay: float | None
    request_id: str | None

    def __init__(
        self, code: grpc.StatusCode, message: str, details: Iterable[Message] = ()
    ) -> None:
        super().__init__(f"{code.name}: {message}" if message else code.name)
        self.code = code
        self.message = message
        self.details = tuple(details)
        info = _first(self.details, error_details_pb2.ErrorInfo)
        self.reason = info.reason if info is not None else ""
        self.metadata = MappingProxyType(dict(info.metadata) if info is not None else {})
        self.request_id = self.metadata.get("request_id")
        retry = _first(self.details, error_details_pb2.RetryInfo)
        self.retry_delay = (
            retry.retry_delay.ToTimedelta().total_seconds()
            if retry is not None and retry.HasField("retry_delay")
            else None
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"request_id={self.request_id!r})"
        )


class InvalidArgumentError(HeadserveError):
    """The request was malformed or an item was unusable (INVALID_ARGUMENT).

    ``field_violations`` lists what the server's ``BadRequest`` detail named; ``field`` and
    ``item`` describe the first one (``item`` is the index parsed from ``items[N]``).
    """

    field_violations: tuple[FieldViolation, ...]

    def __init__(
        self, code: grpc.StatusCode, message: str, details: Iterable[Message] = ()
    ) -> None:
        super().__init__(code, message, details)
        self.field_violations = tuple(
            FieldViolation(field=v.field, description=v.description)
            for detail in self.details
            if isinstance(detail, error_details_pb2.BadRequest)
            for v in detail.field_violations
        )

    @property
    def field(self) -> str | None:
        """The first violation's field path, or ``None`` without a ``BadRequest`` detail."""
        return self.field_violations[0].field if self.field_violations else None

    @property
    def item(self) -> int | None:
        """The first violation's item index (from ``items[N]``), or ``None``."""
        return self.field_violations[0].item if self.field_violations else None


class NotFoundError(HeadserveError):
    """The named head (or other resource) does not exist (NOT_FOUND)."""


class FailedPreconditionError(HeadserveError):
    """The head exists but cannot be used now, e.g. untrained weights (FAILED_PRECONDITION)."""


class ResourceExhaustedError(HeadserveError):
    """The server is overloaded (RESOURCE_EXHAUSTED); unary calls retry it."""


class UnavailableError(HeadserveError, ConnectionError):
    """The server is unreachable, not ready or draining (UNAVAILABLE); unary calls retry it."""


class DeadlineExceededError(HeadserveError, TimeoutError):
    """The call's timeout passed before the server answered (DEADLINE_EXCEEDED)."""


class UnauthenticatedError(HeadserveError):
    """The call carried no valid credentials (UNAUTHENTICATED); never retried."""


class PermissionDeniedError(HeadserveError):
    """The credentials do not allow this call (PERMISSION_DENIED); never retried."""


class AlreadyExistsError(HeadserveError):
    """A head of that name is served already (ALREADY_EXISTS): load it with ``replace``."""


class UnimplementedError(HeadserveError):
    """The server does not serve this RPC (UNIMPLEMENTED), e.g. admin RPCs on a server
    started without admin tokens."""


class InternalError(HeadserveError):
    """The server hit a bug (INTERNAL)."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[HeadserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_status(status: status_pb2.Status) -> HeadserveError:
    """The error for a ``google.rpc.Status`` (as a stream response's ``error`` carries it)."""
    code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    return _build(code, status.message, status.details)


def from_rpc_error(error: grpc.RpcError) -> HeadserveError:
    """The error for a failed call, with the rich details of its ``grpc-status-details-bin``."""
    code_of = getattr(error, "code", None)
    if not callable(code_of):  # an RpcError that is not a call: nothing but its text
        return HeadserveError(grpc.StatusCode.UNKNOWN, str(error))
    code = code_of() or grpc.StatusCode.UNKNOWN
    message = error.details() or ""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        # The rich status disagrees with the call's own code or message (a proxy rewrote one):
        # the call's code and message win, the details are still worth having.
        status = _status_from_trailers(error)
    built = _build(code, message, status.details if status is not None else ())
    if built.request_id is None:  # e.g. refused before headserve's code ran
        built.request_id = _initial_request_id(error)
    return built


def _initial_request_id(error: grpc.RpcError) -> str | None:
    initial = getattr(error, "initial_metadata", None)
    if not callable(initial):
        return None
    try:
        return request_id_in(initial())
    except Exception:  # an RpcError of a call that never started has none to give
        return None


def _status_from_trailers(error: grpc.RpcError) -> status_pb2.Status | None:
    for entry in error.trailing_metadata() or ():
        # a plain (key, value) tuple at run time, whatever the stubs call it
        key, value = cast("tuple[str, str | bytes]", entry)
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def _build(code: grpc.StatusCode, message: str, packed: Iterable[any_pb2.Any]) -> HeadserveError:
    cls = _ERROR_CLASSES.get(code, HeadserveError)
    return cls(code, message, tuple(_unpack(detail) for detail in packed))


def _unpack(detail: any_pb2.Any) -> Message:
    for message_type in _DETAIL_TYPES:
        if detail.TypeName() == message_type.DESCRIPTOR.full_name:
            message = message_type()
            detail.Unpack(message)
            return message
    return detail


def _first(details: tuple[Message, ...], message_type: type[_M]) -> _M | None:
    for detail in details:
        if isinstance(detail, message_type):
            return detail
    return None
