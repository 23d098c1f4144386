"""Errors map to status codes in one place, with details a caller can act on."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2

from headserve.server.calls.status import to_status
from headserve.server.errors import (
    HeadNotFound,
    HeadNotUsable,
    InvalidArgument,
    Overloaded,
    Unavailable,
)


def _details(status):  # type: ignore[no-untyped-def]
    out = {}
    for detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                out[kind.__name__] = message
    return out


def test_invalid_argument_names_field_and_item() -> None:
    status = to_status(InvalidArgument("items[3].text", "is empty", item=3))
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "items[3].text" in status.message
    details = _details(status)
    assert details["BadRequest"].field_violations[0].field == "items[3].text"
    assert details["ErrorInfo"].metadata["item"] == "3"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (HeadNotFound("no head", head="x"), code_pb2.NOT_FOUND),
        (HeadNotUsable("untrained", head="x"), code_pb2.FAILED_PRECONDITION),
        (Overloaded("full"), code_pb2.RESOURCE_EXHAUSTED),
        (Unavailable("loading"), code_pb2.UNAVAILABLE),
        (RuntimeError("a bug"), code_pb2.INTERNAL),
    ],
)
def test_codes(error: Exception, code: int) -> None:
    assert to_status(error).code == code
