"""Every call has a request id: the caller's or the server's, given back in the initial
metadata (or the trailing metadata, as asked), on the typed client's results and errors, in the error details and in every log
line about the call; and one access-log line per call and per stream request."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import pytest
from faults import faults
from grpc_status import rpc_status
from serving import ServerThread

from headserve.client import (
    AsyncClient,
    Batch,
    Client,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
)
from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings
from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

SERVER_MADE = re.compile(r"^[0-9a-f]{32}$")


def _settings(family, **extra) -> Settings:  # type: ignore[no-untyped-def]
    heads = (HeadSpec("encode", "encode"), HeadSpec("sentiment", "classify", family.classify))
    return Settings(model_dir=family.backbone, heads=heads, device="cpu", **extra)


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert))
    yield thread
    thread.stop()


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The log records written during the test (the server logs on its own thread)."""
    with caplog.at_level(logging.INFO):
        yield caplog


def _fields(access: pytest.LogCaptureFixture, request_id: str, count: int = 1) -> list[dict]:  # type: ignore[type-arg]
    """The access-log lines of the call `request_id`, as their fields and message, once there
    are `count` of them: a failed call's line is written after its status is sent."""
    deadline = time.monotonic() + 10
    while True:
        lines = [
            {**r.fields, "message": r.getMessage()}  # type: ignore[attr-defined]
            for r in access.records
            if r.name == "headserve.access" and getattr(r, "request_id", None) == request_id
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_the_server_makes_an_id_per_call_and_sends_it_first(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text="hello")])
        ids = set()
        for _ in range(3):
            _, call = stub.Encode.with_call(request)
            (entry,) = [m for m in call.initial_metadata() if m.key == "x-request-id"]
            assert SERVER_MADE.match(entry.value)
            ids.add(entry.value)
        assert len(ids) == 3  # one per call


def test_the_callers_id_is_kept_and_on_the_result(server: ServerThread, access) -> None:  # type: ignore[no-untyped-def]
    with Client(server.target, metadata=[("x-request-id", "order-1234")]) as client:
        result = client.encode(["a sentence"])
    assert result.request_id == "order-1234"
    (line,) = _fields(access, "order-1234")
    assert line["message"] == "call"
    assert line["rpc"] == "headserve.v1.Encoder/Encode" and line["code"] == "OK"
    assert line["items"] == 1 and line["input_tokens"] == result.usage.input_tokens > 0
    assert line["queue_ms"] == pytest.approx(result.timing.queue_ms, abs=1e-3)
    assert line["inference_ms"] == pytest.approx(result.timing.inference_ms, abs=1e-3)
    assert line["ms"] >= line["inference_ms"] > 0
    assert line["peer"].startswith("ipv4:127.0.0.1:")


def test_a_failed_call_names_its_id_in_the_error_details(server: ServerThread, access) -> None:  # type: ignore[no-untyped-def]
    with Client(server.target, max_retries=0) as client:
        with pytest.raises(InvalidArgumentError) as bad:
            client.encode(["fine", "  "])
        with pytest.raises(NotFoundError) as unknown:
            client.classify(["fine"], heads=["no-such-head"])
    for error, code in ((bad.value, "INVALID_ARGUMENT"), (unknown.value, "NOT_FOUND")):
        assert error.request_id is not None and SERVER_MADE.match(error.request_id)
        assert error.metadata["request_id"] == error.request_id  # from ErrorInfo
        (line,) = _fields(access, error.request_id)
        assert line["code"] == code and line["input_tokens"] == 0
    assert bad.value.field == "items[1].text"  # the rest of the details are unchanged


def test_an_internal_error_carries_the_id_too(bert, access) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert))
    try:
        assert thread.core is not None
        faults(thread.core.runner).fail_next = RuntimeError("injected fault")
        with Client(thread.target, max_retries=0) as client:
            with pytest.raises(InternalError) as failed:
                client.encode(["this batch fails"], timeout=30)
        request_id = failed.value.request_id
        assert request_id is not None and failed.value.metadata["request_id"] == request_id
        # the model worker's log line about the failed batch names the call it was computing
        (worker,) = [r for r in access.records if r.getMessage().startswith("backbone failed")]
        assert worker.request_ids == (request_id,)  # type: ignore[attr-defined]
        assert worker.threadName.startswith("headserve-model")
    finally:
        thread.stop()


def _metadata_id(metadata) -> str | None:  # type: ignore[no-untyped-def]
    return next((m.value for m in metadata or () if m.key == "x-request-id"), None)


def test_a_failed_unary_call_has_its_id_in_the_trailing_metadata_too(
    server: ServerThread,
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Encode(encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=" ")]))
    request_id = _metadata_id(failed.value.initial_metadata())  # type: ignore[attr-defined]
    assert request_id is not None and SERVER_MADE.match(request_id)
    assert _metadata_id(failed.value.trailing_metadata()) == request_id  # type: ignore[attr-defined]
    status = rpc_status.from_call(failed.value)  # type: ignore[arg-type]
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_trailing_request_ids_go_back_with_the_end_of_a_unary_call(bert) -> None:  # type: ignore[no-untyped-def]
    """`--request-id-metadata trailing`: no initial metadata of its own for a unary call (a
    write saved), the id in the trailing metadata of a result and of an error; a stream
    still gets it first."""
    thread = ServerThread(_settings(bert, request_id_in="trailing"))
    try:
        with grpc.insecure_channel(thread.target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text="hello")])
            _, call = stub.Encode.with_call(request, metadata=[("x-request-id", "t-1")])
            assert _metadata_id(call.initial_metadata()) is None
            assert _metadata_id(call.trailing_metadata()) == "t-1"
            bad = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=" ")])
            with pytest.raises(grpc.RpcError) as failed:
                stub.Encode(bad)
            request_id = _metadata_id(failed.value.trailing_metadata())  # type: ignore[attr-defined]
            assert request_id is not None and SERVER_MADE.match(request_id)
            status = rpc_status.from_call(failed.value)  # type: ignore[arg-type]
            assert status is not None and "items[0].text" in status.message
            replies = stub.EncodeStream(
                iter([encoder_pb2.EncodeRequest(id="s", items=request.items)])
            )
            assert SERVER_MADE.match(_metadata_id(replies.initial_metadata()) or "")
            assert [r.id for r in replies] == ["s"]
        with Client(thread.target, max_retries=0) as client:  # the typed client reads both
            assert client.encode(["hello"]).request_id is not None
            with pytest.raises(InvalidArgumentError) as error:
                client.encode(["  "])
            assert error.value.request_id is not None
            assert error.value.request_id == error.value.metadata["request_id"]
    finally:
        thread.stop()


def test_a_bad_request_id_is_refused_naming_the_metadata(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text="hello")])
        for bad in ("two words", "x" * 129):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Encode(request, metadata=[("x-request-id", bad)])
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            status = rpc_status.from_call(refused.value)
            assert status is not None and "metadata.x-request-id" in status.message


def test_a_stream_has_one_id_and_a_line_per_request(server: ServerThread, access) -> None:  # type: ignore[no-untyped-def]
    batches = [Batch(["one", "two"], id="a"), Batch([" "], id="b"), Batch(["three"], id="c")]
    with Client(server.target) as client:
        outcomes = list(client.encode_stream(batches))
    request_id = outcomes[0].request_id
    assert request_id is not None and SERVER_MADE.match(request_id)
    assert {o.request_id for o in outcomes} == {request_id}
    assert outcomes[0].unwrap().request_id == request_id  # the batch's result says it too
    error = outcomes[1].error
    assert error is not None and error.request_id == request_id
    lines = _fields(access, request_id, count=4)
    messages = [line for line in lines if line["message"] == "stream message"]
    assert [(m["message_id"], m["code"], m["items"]) for m in messages] == [
        ("a", "OK", 2),
        ("b", "INVALID_ARGUMENT", 1),
        ("c", "OK", 1),
    ]
    assert messages[0]["input_tokens"] == outcomes[0].unwrap().usage.input_tokens
    (end,) = [line for line in lines if line["message"] == "stream"]
    assert end["rpc"] == "headserve.v1.Encoder/EncodeStream" and end["code"] == "OK"
    assert end["messages"] == 3 and end["items"] == 4
    assert end["input_tokens"] == sum(m["input_tokens"] for m in messages)


def test_the_async_client_gives_the_id_too(server: ServerThread) -> None:
    async def calls() -> tuple[str | None, str | None, str | None]:
        async with AsyncClient(server.target, max_retries=0) as client:
            result = await client.classify(["great"], heads=["sentiment"])
            try:
                await client.classify(["great"], heads=["nope"])
            except NotFoundError as error:
                failed = error.request_id
            outcomes = [o async for o in client.classify_stream([Batch(["fine"], id="x")])]
            return result.request_id, failed, outcomes[0].request_id

    unary, failed, streamed = asyncio.run(calls())
    for request_id in (unary, failed, streamed):
        assert request_id is not None and SERVER_MADE.match(request_id)
    assert len({unary, failed, streamed}) == 3


def test_access_log_off_writes_no_lines_and_keeps_the_ids(bert, access) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, access_log=False))
    try:
        with Client(thread.target) as client:
            result = client.encode(["quiet"])
        assert result.request_id is not None
        assert not [r for r in access.records if r.name == "headserve.access"]
    finally:
        thread.stop()


def test_the_client_works_without_opentelemetry(server: ServerThread) -> None:
    """OpenTelemetry is optional on the caller's side: without it, calls carry no trace
    context and work as before."""
    script = f"""
import sys
sys.modules["opentelemetry"] = None  # as if it were not installed: importing it fails
from headserve.client import Client
from headserve.client import _call_meta
assert _call_meta._inject is None
with Client("{server.target}") as client:
    print(client.encode(["no tracing here"]).request_id)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert SERVER_MADE.match(run.stdout.strip())


def test_the_client_sends_the_callers_trace_context() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from headserve.client._call_meta import outgoing

    assert outgoing((("tenant", "a"),)) == (("tenant", "a"),)  # no span: nothing added
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("caller") as span:
        sent = dict(outgoing((("tenant", "a"),)))
    context = span.get_span_context()
    assert sent["tenant"] == "a"
    # version 00, the caller's trace and span; then the flags (sampled, ...)
    assert sent["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
