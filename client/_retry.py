"""When a failed unary call is tried again, and after how long.

Only what may succeed a moment later is retried: what headserve's error table
(``headserve.v1.errors``) marks so by the ``ErrorInfo.reason`` it sent (UNAVAILABLE: loading or
draining; ``OVERLOADED``), and, without a headserve reason, UNAVAILABLE (unreachable),
RESOURCE_EXHAUSTED from gRPC's own concurrent-call cap, and an INTERNAL that headserve did not
send. A RESOURCE_EXHAUSTED with another reason is not: ``OUT_OF_MEMORY`` says one row does not
fit on the device even alone, and a request over the message size limit stays over it.
headserve's own INTERNAL always carries its ``ErrorInfo`` and is a bug, so it is not retried;
one without it comes from a proxy in front of headserve whose backend failed under the call:
Ray Serve's proxy answers so when the replica running the call dies. Every headserve method is
a read, so a retry cannot do anything twice. The delay doubles per attempt, is capped, and is
jittered so clients that failed together do not come back together; a ``RetryInfo`` from the
server raises it. Retries never run past the call's deadline. Streams are never retried: their
batches may already have been answered.
"""

from __future__ import annotations

import random
import time

import grpc

from headserve.v1.errors import by_reason

from . import errors
from .errors import HeadserveError

__all__ = [
    "RETRYABLE_CODES",
    "Attempts",
    "backoff",
    "deadline_after",
    "may_succeed_later",
    "remaining",
    "retry_delay",
]

RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL}
)
INITIAL_BACKOFF_S = 0.1
MAX_BACKOFF_S = 4.0


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt + 1``: 0.1 s doubling, capped, -50% jitter."""
    ceiling = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2.0**attempt)
    return ceiling * (0.5 + random.random() / 2)


def may_succeed_later(error: HeadserveError) -> bool:
    """Whether the same call, sent again, may succeed: the server was busy or unreachable.
    An error headserve sent says so in its row of the contract's error table (its reason);
    one it did not send (a proxy's, gRPC's own) is judged by its code."""
    kind = by_reason(error.reason) if error.reason else None
    if kind is not None and kind.grpc == error.code.name:
        return kind.retry
    if error.code not in RETRYABLE_CODES:
        return False
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    if error.code == grpc.StatusCode.INTERNAL:
        return not error.reason  # not headserve's: a proxy lost the replica under the call
    if error.reason:
        return False  # a reason headserve's table does not know
    # No headserve reason: gRPC refused it itself. Its concurrent-call cap is overload; a
    # message over the size limit ("Received message larger than max") is not.
    return "larger than max" not in error.message


def retry_delay(
    error: HeadserveError, attempt: int, max_retries: int, deadline: float | None
) -> float | None:
    """Seconds to wait before trying again after ``error``, or ``None`` to give up.

    ``attempt`` counts the retries made so far; ``deadline`` is a ``time.monotonic()`` instant.
    """
    if not may_succeed_later(error) or attempt >= max_retries:
        return None
    delay = backoff(attempt)
    if error.retry_delay is not None:
        delay = min(MAX_BACKOFF_S, max(delay, error.retry_delay))
    if deadline is not None and time.monotonic() + delay >= deadline:
        return None
    return delay


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` instant ``timeout`` seconds from now, or ``None`` for no limit."""
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (at least a millisecond), or ``None`` for no limit."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


class Attempts:
    """The tries of one unary call: its deadline, and after each failure whether and how long
    to wait before the next (each transport sends; this decides)."""

    def __init__(self, timeout: float | None, max_retries: int) -> None:
        self.deadline = deadline_after(timeout)
        self._max_retries = max_retries
        self._attempt = 0

    def remaining(self) -> float | None:
        """The next try's timeout: what is left of the deadline."""
        return remaining(self.deadline)

    def after(self, rpc_error: grpc.RpcError) -> float:
        """Seconds to wait before trying again after `rpc_error`; raises the call's error
        (the client's exception for it) when it is not worth another try."""
        error = errors.from_rpc_error(rpc_error)
        delay = retry_delay(error, self._attempt, self._max_retries, self.deadline)
        if delay is None:
            raise error from rpc_error
        self._attempt += 1
        return delay
