"""Where errors become gRPC statuses (google.rpc.Status with details), by the contract's error
table (headserve.v1.errors; transports/http.py reads the same table for HTTP)."""

from __future__ import annotations

import logging
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from headserve.v1 import errors as table

from ..call_info import CURRENT, HEAD_VERSIONS_KEY, REQUEST_ID_KEY, current_request_id
from ..errors import HeadNotFound, HeadserveError, InvalidArgument

log = logging.getLogger(__name__)

DOMAIN = "headserve"


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def http_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """OpenAI's error JSON for `exc` and its HTTP status, by the error table (an HTTP answer, a
    batch job's error line); anything not ours is a bug: 500."""
    row = exc.kind if isinstance(exc, HeadserveError) else table.INTERNAL
    if isinstance(exc, HeadserveError):
        message, code = exc.message, exc.reason.lower()
    else:
        log.error("internal error", exc_info=exc)
        message, code = f"internal error: {exc!r}", "internal"
    param = exc.field if isinstance(exc, InvalidArgument) else None
    if isinstance(exc, HeadNotFound):
        param, code = "model", "model_not_found"
    body = {"error": {"message": message, "type": row.http_type, "param": param, "code": code}}
    return row.http, body


def code_of(exc: BaseException) -> int:
    """The google.rpc code `exc` is answered with: its kind's (headserve.v1.errors)."""
    kind = exc.kind if isinstance(exc, HeadserveError) else table.INTERNAL
    code: int = code_pb2.Code.Value(kind.grpc)
    return code


def to_status(exc: BaseException) -> status_pb2.Status:
    """A google.rpc.Status for `exc`. Anything not a HeadserveError is a bug: INTERNAL.

    Its ErrorInfo carries the call's request id (`metadata["request_id"]`), so that a caller
    who reports a failure can name the server's log lines and trace of it."""
    metadata: dict[str, str] = {}
    request_id = current_request_id()
    if request_id is not None:
        metadata["request_id"] = request_id
    if not isinstance(exc, HeadserveError):
        log.error("internal error", exc_info=exc)
        info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN, metadata=metadata)
        return status_pb2.Status(
            code=code_pb2.INTERNAL, message=f"internal error: {exc!r}", details=[_pack(info)]
        )
    code = code_of(exc)
    details = []
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=exc.message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
        if exc.item is not None:
            metadata["item"] = str(exc.item)
        metadata["field"] = exc.field
    head = getattr(exc, "head", None)
    if head:
        metadata["head"] = head
        version = _answered().get(head)
        if version:
            metadata["head_version"] = version
    details.insert(
        0, _pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=metadata))
    )
    return status_pb2.Status(code=code, message=exc.message, details=details)


class Abortable(Protocol):
    """What `abort` needs of a call's context: grpc.aio's, or the Ray Serve adapter's."""

    async def abort_with_status(self, status: grpc.Status) -> NoReturn: ...


def _answered() -> dict[str, str]:
    """The heads that answered the current call so far, with their versions."""
    call = CURRENT.get()
    return call.heads if call is not None else {}


def trailers() -> tuple[tuple[str, str], ...]:
    """What a call's trailing metadata adds: the versions of the heads that answered."""
    call = CURRENT.get()
    if call is None or not call.heads:
        return ()
    return ((HEAD_VERSIONS_KEY, call.head_versions()),)


async def abort(context: Abortable, exc: BaseException) -> None:
    """End a unary call with the status for `exc` (raises, as context.abort does). Its
    trailing metadata carries the call's request id too, beside the status details, and
    the versions of the heads that answered."""
    status = rpc_status.to_status(to_status(exc))
    request_id = current_request_id()
    trailing = (*status.trailing_metadata, *trailers())
    if request_id is not None:
        trailing = (*trailing, (REQUEST_ID_KEY, request_id))
    status = status._replace(trailing_metadata=trailing)  # a namedtuple
    await context.abort_with_status(status)
