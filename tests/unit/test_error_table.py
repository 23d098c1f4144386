"""The contract's error table (headserve.v1.errors) is the one map from a server error to the
wire: every error class the server defines names its own row, gRPC and HTTP answer by it, the
client's retry rule follows it, and docs/operations.md is it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2

import headserve.server
from headserve.client import errors as client_errors
from headserve.client._retry import may_succeed_later
from headserve.server.calls.status import code_of, to_status
from headserve.server.errors import HeadserveError
from headserve.server.transports.http import error_response
from headserve.v1 import errors as table

OPTIONAL = ("ray",)  # modules of extras a test machine may lack


def _server_error_classes() -> list[type[HeadserveError]]:
    for module in pkgutil.walk_packages(headserve.server.__path__, "headserve.server."):
        if module.name.endswith("__main__"):  # runs the CLI when imported
            continue
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in OPTIONAL:
                raise
    found, todo = [], list(HeadserveError.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [c for c in found if c.__module__.startswith("headserve.server")]


CLASSES = _server_error_classes()


def _instance(cls: type[HeadserveError]) -> HeadserveError:
    """One of `cls`, made as the server makes it."""
    parameters = inspect.signature(cls.__init__).parameters
    if "field" in parameters:
        return cls("items[0].text", "is empty")  # type: ignore[call-arg]
    if "head" in parameters:
        return cls("a message", head="h")  # type: ignore[call-arg]
    return cls("a message")


def test_the_server_defines_the_error_classes_it_maps() -> None:
    assert {c.__name__ for c in CLASSES} >= {"InvalidArgument", "TooLarge", "Cancelled"}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_server_error_class_names_its_own_row(cls: type[HeadserveError]) -> None:
    assert "kind" in vars(cls), f"{cls.__name__} names no row of headserve.v1.errors"
    assert cls.kind in table.KINDS


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_grpc_and_http_answer_by_the_row(cls: type[HeadserveError]) -> None:
    error, kind = _instance(cls), cls.kind
    assert code_of(error) == code_pb2.Code.Value(kind.grpc)
    status = to_status(error)
    assert status.code == code_pb2.Code.Value(kind.grpc)
    response = error_response(error, None)
    assert response.status_code == kind.http
    assert b'"type":"' + kind.http_type.encode() + b'"' in response.body


def test_a_bug_is_internal_on_both_transports() -> None:
    bug = KeyError("x")
    assert code_of(bug) == code_pb2.INTERNAL
    assert error_response(bug, None).status_code == table.INTERNAL.http == 500


def test_every_row_is_used_by_a_class_or_is_the_bug_row() -> None:
    used = {c.kind for c in CLASSES} | {table.INTERNAL}
    assert set(table.KINDS) == used


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_client_retries_what_the_row_says(cls: type[HeadserveError]) -> None:
    """Through the wire: the server's status for the error, read by the client."""
    received = client_errors.from_status(to_status(_instance(cls)))
    assert received.code == getattr(grpc.StatusCode, cls.kind.grpc)
    assert received.reason == cls.kind.reason
    assert may_succeed_later(received) is cls.kind.retry


def test_the_client_does_not_retry_a_bug() -> None:
    received = client_errors.from_status(to_status(KeyError("x")))
    assert received.reason == "INTERNAL" and not may_succeed_later(received)


def test_docs_operations_md_holds_the_table() -> None:
    docs = Path(__file__).parents[2] / "docs" / "operations.md"
    assert table.markdown() in docs.read_text()
