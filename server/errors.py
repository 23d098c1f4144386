"""Errors the server raises, by meaning. Each names its row of the contract's error table
(`headserve.v1.errors`: gRPC code, ErrorInfo reason, HTTP status, whether to retry), which
calls/status.py (gRPC) and transports/http.py (HTTP) read; a test fails when a class has no row."""

from __future__ import annotations

from typing import ClassVar

from headserve.v1 import errors as table
from headserve.v1.errors import ErrorKind


class HeadserveError(Exception):
    kind: ClassVar[ErrorKind] = table.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        """Its ErrorInfo reason (its kind's)."""
        return self.kind.reason


def kind_of(exc: BaseException) -> ErrorKind:
    """The error table's row `exc` is answered by: its class's, or INTERNAL (a bug)."""
    return exc.kind if isinstance(exc, HeadserveError) else table.INTERNAL


class InvalidArgument(HeadserveError):
    """Bad input or option. `field` is a path such as "items[3].text" or "options.top_k"."""

    kind = table.INVALID_ARGUMENT

    def __init__(self, field: str, message: str, *, item: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message  # what is wrong with the field, without its name
        self.item = item


class TooLarge(InvalidArgument):
    """Over a size limit of the server's (--max-request-items, --max-item-chars...): on gRPC
    INVALID_ARGUMENT like any bad input; over HTTP 413."""

    kind = table.TOO_LARGE


class HeadNotFound(HeadserveError):
    kind = table.HEAD_NOT_FOUND

    def __init__(self, message: str, *, head: str) -> None:
        super().__init__(message)
        self.head = head


class JobNotFound(HeadserveError):
    """No batch job or file of that id (--jobs-dir)."""

    kind = table.JOB_NOT_FOUND


class HeadNotUsable(HeadserveError):
    """The head exists but cannot serve, e.g. its weights are untrained."""

    kind = table.HEAD_NOT_USABLE

    def __init__(self, message: str, *, head: str) -> None:
        super().__init__(message)
        self.head = head


class Unavailable(HeadserveError):
    kind = table.UNAVAILABLE


class Unauthenticated(HeadserveError):
    kind = table.UNAUTHENTICATED


class PermissionDenied(HeadserveError):
    kind = table.PERMISSION_DENIED


class AdminOff(HeadserveError):
    kind = table.ADMIN_OFF


class JobsOff(HeadserveError):
    """Batch jobs are not kept here: no --jobs-dir, or a Ray Serve replica."""

    kind = table.JOBS_OFF


class HeadExists(HeadserveError):
    kind = table.HEAD_EXISTS

    def __init__(self, message: str, *, head: str) -> None:
        super().__init__(message)
        self.head = head


class StoreFailed(HeadserveError):
    kind = table.HEAD_STORE_FAILED


class Overloaded(HeadserveError):
    kind = table.OVERLOADED


class HeadFailed(HeadserveError):
    """A head raised while preparing, computing or finishing: a bug in that head, or a model
    its code cannot run; reported as INTERNAL, naming the head."""

    kind = table.HEAD_FAILED

    def __init__(self, message: str, *, head: str) -> None:
        super().__init__(message)
        self.head = head


class DeadlineExceeded(HeadserveError):
    kind = table.DEADLINE_EXCEEDED


class RequestTimeout(HeadserveError):
    """An HTTP request's body came too slowly: it held a call's place without sending."""

    kind = table.REQUEST_TIMEOUT


class OutOfMemory(HeadserveError):
    """Even one row did not fit in the model's memory (after splitting the batch)."""

    kind = table.OUT_OF_MEMORY
