"""Errors the server raises, by meaning. status.py maps them to gRPC codes, in one place."""

from __future__ import annotations


class HeadserveError(Exception):
    reason = "ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(HeadserveError):
    """Bad input or option. `field` is a path such as "items[3].text" or "options.top_k"."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, *, item: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message  # what is wrong with the field, without its name
        self.item = item


class TooLarge(InvalidArgument):
    """Over a size limit of the server's (--max-request-items, --max-item-chars...): on gRPC
    INVALID_ARGUMENT like any bad input; over HTTP 413."""


class HeadNotFound(HeadserveError):
    reason = "HEAD_NOT_FOUND"

    def __init__(self, message: str, *, head: str) -> None:
        super().__init__(message)
        self.head = head


class HeadNotUsable(HeadserveError):
    """The head exists but cannot serve, e.g. its weights are untrained."""

    reason = "HEAD_NOT_USABLE"

    def __init__(self, message: str, *, head: str) -> None:
        super().__init__(message)
        self.head = head


class Unavailable(HeadserveError):
    reason = "UNAVAILABLE"


class Unauthenticated(HeadserveError):
    reason = "UNAUTHENTICATED"


class Overloaded(HeadserveError):
    reason = "OVERLOADED"


class HeadFailed(HeadserveError):
    """A head raised while computing a batch: a bug in that head, reported as INTERNAL."""

    reason = "HEAD_FAILED"

    def __init__(self, message: str, *, head: str) -> None:
        super().__init__(message)
        self.head = head


class DeadlineExceeded(HeadserveError):
    reason = "DEADLINE_EXCEEDED"


class OutOfMemory(HeadserveError):
    """Even one row did not fit in the model's memory (after splitting the batch)."""

    reason = "OUT_OF_MEMORY"
