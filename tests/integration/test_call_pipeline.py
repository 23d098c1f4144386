"""The call pipeline seen from outside: gRPC and HTTP calls share one concurrency limit, and
every call, on either transport, ends with the same access line and per-call metrics. A
call's class of work (`x-priority`, or a request's `priority`) is on both, a bad one is
refused naming it, and bulk calls are refused first when the server is full (how the
scheduler orders the classes: tests/unit/test_batcher.py).
(A call through a Ray Serve replica: tests/ray/test_ray_serve.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from faults import held
from prometheus_client.parser import text_string_to_metric_families
from serving import ServerThread

from headserve.client import Client
from headserve.plugins.contract import HeadSpec
from headserve.server.calls.connections import Connections
from headserve.server.core import engine
from headserve.server.core.limits import RequestLimits
from headserve.server.core.scheduler import Limits
from headserve.server.loading import Settings
from headserve.server.observability.metrics import MetricsServer
from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

MAX_CALLS = 4
ENCODE = "headserve.v1.Encoder/Encode"
EMBEDDINGS = "POST /v1/embeddings"


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    settings = Settings(
        model_dir=bert.backbone,
        heads=(HeadSpec("encode", "encode", None, {"pooling": "mean"}),),
        device="cpu",
        http_port=0,
        limits=Limits(workers=1),
        request_limits=RequestLimits(max_concurrent_calls=MAX_CALLS, max_streams=2),
        connections=Connections(max_health_watches=1),
    )
    thread = ServerThread(settings)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def scrape(server: ServerThread) -> Iterator[str]:
    """The server's /metrics endpoint, as `headserve serve --metrics-port` serves it."""
    exporter = MetricsServer(server.server.pipeline.metrics.registry, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{exporter.port}/metrics"
    exporter.close()


def _post(
    server: ServerThread, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    assert server.server.http is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http.port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def _in_progress(server: ServerThread, count: int) -> None:
    deadline = time.monotonic() + 10
    while server.server.pipeline.calls != count:
        assert time.monotonic() < deadline, f"{server.server.pipeline.calls} calls in progress"
        time.sleep(0.01)


def test_an_http_request_counts_against_the_calls_grpc_holds(server: ServerThread) -> None:
    """Two gRPC streams and two held unary calls fill --max-concurrent-calls (4): an HTTP
    request is refused as gRPC refuses, 429 with retry-after naming the limit; once the unary
    calls are answered, it is served."""
    _in_progress(server, 0)
    core = server.core
    assert core is not None

    async def main() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            streams = []
            for index in range(2):
                stream = stub.EncodeStream()
                request = encoder_pb2.EncodeRequest(
                    id=str(index), items=[common_pb2.TextInput(text="held open")]
                )
                await stream.write(request)
                assert (await stream.read()).id == str(index)
                streams.append(stream)
            with held(core.runner) as gate:
                unary = [
                    asyncio.ensure_future(
                        stub.Encode(
                            encoder_pb2.EncodeRequest(
                                items=[common_pb2.TextInput(text=f"held call {i}")]
                            )
                        )
                    )
                    for i in range(2)
                ]
                await asyncio.to_thread(_in_progress, server, MAX_CALLS)
                status, body, headers = await asyncio.to_thread(
                    _post, server, "/v1/embeddings", {"input": "one too many"}
                )
                assert status == 429 and headers["retry-after"]
                assert body["error"]["code"] == "overloaded"
                assert "--max-concurrent-calls" in body["error"]["message"]
                assert headers["x-request-id"]
                gate.set()
                assert all(len(r.results) == 1 for r in await asyncio.gather(*unary))
            await asyncio.to_thread(_in_progress, server, 2)
            status, body, _ = await asyncio.to_thread(
                _post, server, "/v1/embeddings", {"input": "room now"}
            )
            assert status == 200 and len(body["data"]) == 1
            for stream in streams:
                await stream.done_writing()
                assert await stream.read() is grpc.aio.EOF

    asyncio.run(main())


def test_every_call_ends_with_its_metrics_on_either_transport(
    server: ServerThread, scrape: str
) -> None:
    before = _samples(scrape)
    with Client(server.target, max_retries=0) as client:
        client.encode(["counted once"])
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _post(server, "/v1/embeddings", {"input": ["a", "b"]})[0] == 200
    assert _post(server, "/v1/embeddings", {"input": []})[0] == 400
    _in_progress(server, 0)
    after = _samples(scrape)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (
        grew(
            "headserve_calls_total", transport="grpc", rpc=ENCODE, code="OK", priority="interactive"
        )
        == 1
    )
    assert (
        grew(
            "headserve_calls_total",
            transport="grpc",
            rpc=ENCODE,
            code="INVALID_ARGUMENT",
            priority="interactive",
        )
        == 1
    )
    assert (
        grew(
            "headserve_calls_total",
            transport="http",
            rpc=EMBEDDINGS,
            code="OK",
            priority="interactive",
        )
        == 1
    )
    assert (
        grew(
            "headserve_calls_total",
            transport="http",
            rpc=EMBEDDINGS,
            code="INVALID_ARGUMENT",
            priority="interactive",
        )
        == 1
    )
    assert (
        grew("headserve_call_seconds_count", transport="grpc", rpc=ENCODE, priority="interactive")
        == 2
    )
    assert (
        grew(
            "headserve_call_seconds_count", transport="http", rpc=EMBEDDINGS, priority="interactive"
        )
        == 2
    )
    assert after[("headserve_calls_in_progress", ())] == 0
    # and under the names Prometheus users know (grpc-ecosystem's, OpenTelemetry's HTTP)
    encode = {"grpc_type": "unary", "grpc_service": "headserve.v1.Encoder", "grpc_method": "Encode"}
    assert grew("grpc_server_started_total", **encode) == 2
    assert grew("grpc_server_handled_total", **encode, grpc_code="OK") == 1
    assert grew("grpc_server_handled_total", **encode, grpc_code="INVALID_ARGUMENT") == 1
    assert grew("grpc_server_handling_seconds_count", **encode) == 2
    embeddings = {"method": "POST", "route": "/v1/embeddings"}
    assert grew("http_server_requests_total", **embeddings, status="200") == 1
    assert grew("http_server_requests_total", **embeddings, status="400") == 1
    assert grew("http_server_request_duration_seconds_count", **embeddings, status="200") == 1


def test_both_transports_write_the_same_access_line(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        with Client(server.target) as client:
            result = client.encode(["one line", "per call"])
        status, _, headers = _post(server, "/v1/embeddings", {"input": ["one line", "per call"]})
        assert status == 200
        lines = {
            getattr(r, "request_id", None): {**r.fields, "message": r.getMessage()}  # type: ignore[attr-defined]
            for r in _records(caplog, 2)
        }
    grpc_line, http_line = lines[result.request_id], lines[headers["x-request-id"]]
    for line, transport, rpc in ((grpc_line, "grpc", ENCODE), (http_line, "http", EMBEDDINGS)):
        assert line["message"] == "call" and line["transport"] == transport
        assert line["rpc"] == rpc and line["code"] == "OK"
        assert line["items"] == 2 and line["input_tokens"] == result.usage.input_tokens
        assert line["ms"] > 0 and line["peer"]
    assert http_line["status"] == 200 and "status" not in grpc_line


def _records(caplog: pytest.LogCaptureFixture, count: int) -> list[logging.LogRecord]:
    """The access-log records, once there are `count` (a line is written as a call ends)."""
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in caplog.records if r.name == "headserve.access"]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.01)


def _lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The access lines' fields and message, once there are `count`."""
    return [{**r.fields, "message": r.getMessage()} for r in _records(caplog, count)]  # type: ignore[attr-defined]


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_bytes_that_are_not_the_request_message_are_invalid_argument(server: ServerThread) -> None:
    """A truncated varint: gRPC would answer UNKNOWN with a Python class name if decoding
    raised; the call gets INVALID_ARGUMENT naming the message, unary and stream alike."""
    garbage = b"\x0a\xff\xff\xff"  # field 1, length-delimited, a length that never ends
    with grpc.insecure_channel(server.target) as channel:
        unary = channel.unary_unary("/headserve.v1.Encoder/Encode")
        with pytest.raises(grpc.RpcError) as refused:
            unary(garbage, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request: is not a valid headserve.v1.EncodeRequest" in refused.value.details()
        stream = channel.stream_stream("/headserve.v1.Encoder/EncodeStream")
        with pytest.raises(grpc.RpcError) as ended:
            list(stream(iter([garbage]), timeout=10))
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid headserve.v1.EncodeRequest" in ended.value.details()


def test_every_transport_carries_the_class_to_the_access_line_and_the_metrics(
    server: ServerThread, scrape: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bulk by the client's option, by a request's own field, by an HTTP header; interactive
    by default and by a message's field inside a bulk stream. Bulk answers equal interactive
    ones."""
    texts = ["a bulk sentence", "and another one"]
    before = _samples(scrape)
    with caplog.at_level(logging.INFO):
        with Client(server.target) as client:
            live = client.encode(texts)
            bulk = client.with_options(priority="bulk").encode(texts)
        with grpc.insecure_channel(server.target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            items = [common_pb2.TextInput(text=t) for t in texts]
            stub.Encode(encoder_pb2.EncodeRequest(items=items, priority=common_pb2.PRIORITY_BULK))
            requests = [
                encoder_pb2.EncodeRequest(id="bulk", items=items),
                encoder_pb2.EncodeRequest(
                    id="live", items=items, priority=common_pb2.PRIORITY_INTERACTIVE
                ),
            ]
            replies = list(stub.EncodeStream(iter(requests), metadata=(("x-priority", "bulk"),)))
            assert [r.id for r in replies] == ["bulk", "live"]
        status, _, _ = _post(server, "/v1/embeddings", {"input": texts}, {"x-priority": "BULK"})
        assert status == 200
        lines = _lines(caplog, 7)
    after = _samples(scrape)
    np.testing.assert_allclose([e.vector for e in bulk], [e.vector for e in live], atol=1e-6)
    calls = [(line["transport"], line["priority"]) for line in lines if line["message"] == "call"]
    assert calls == [
        ("grpc", "interactive"),
        ("grpc", "bulk"),  # the client's with_options(priority="bulk")
        ("grpc", "bulk"),  # the request's own field
        ("http", "bulk"),  # the header, any case
    ]
    messages = {line["message_id"]: line for line in lines if line["message"] == "stream message"}
    assert messages["bulk"]["priority"] == "bulk" and messages["live"]["priority"] == "interactive"
    assert [line["priority"] for line in lines if line["message"] == "stream"] == ["bulk"]

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    encode = {"transport": "grpc", "rpc": "headserve.v1.Encoder/Encode", "code": "OK"}
    assert grew("headserve_calls_total", **encode, priority="bulk") == 2
    assert grew("headserve_calls_total", **encode, priority="interactive") == 1
    http = {"transport": "http", "rpc": "POST /v1/embeddings", "code": "OK"}
    assert grew("headserve_calls_total", **http, priority="bulk") == 1
    # rows: 2 per call; the stream's "bulk" message, the two unary bulk calls and HTTP's
    assert grew("headserve_queue_wait_seconds_count", priority="bulk") == 8
    assert grew("headserve_queue_wait_seconds_count", priority="interactive") == 4


def test_a_bulk_calls_own_work_runs_below_the_event_loop(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk call prepares (tokenizes) and finishes its items on a thread at the lowest
    priority, short as it is; an interactive call of short text does so on the event loop."""
    seen: list[tuple[str, int]] = []
    prepare = engine._prepare

    def spied(head: Any, item: Any, options: Any) -> Any:
        thread = threading.current_thread()
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen.append((thread.name, nice))
        return prepare(head, item, options)

    monkeypatch.setattr(engine, "_prepare", spied)
    with Client(server.target) as client:
        client.encode(["a live sentence"])
        (live,) = seen
        client.with_options(priority="bulk").encode(["a bulk sentence"])
        (_, bulk) = seen
    loop_nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert live == (server._thread.name, loop_nice)  # the event loop's own thread
    assert bulk[0].startswith("headserve-bulk") and bulk[1] == min(19, loop_nice + 19)


def test_a_class_the_server_does_not_know_is_refused_naming_it(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text="x")])
        with pytest.raises(grpc.RpcError) as refused:
            stub.Encode(request, metadata=(("x-priority", "urgent"),), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata.x-priority" in str(refused.value.details())
        assert "'urgent' is not 'interactive' or 'bulk'" in str(refused.value.details())
        request.priority = 7  # a number a newer client might send
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Encode(request, timeout=10)
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "priority: unknown value 7" in str(unknown.value.details())
    status, body, _ = _post(server, "/v1/embeddings", {"input": "x"}, {"x-priority": "later"})
    assert status == 400 and "metadata.x-priority" in body["error"]["message"]
    with pytest.raises(ValueError, match="priority must be"):
        Client(server.target).with_options(priority="urgent")  # type: ignore[arg-type]


def test_a_full_server_refuses_bulk_calls_first(server: ServerThread) -> None:
    """Three held calls (of --max-concurrent-calls 4): a bulk call is refused, over gRPC and
    HTTP, naming the share it may take; an interactive call is still admitted."""
    _in_progress(server, 0)
    core = server.core
    assert core is not None

    async def main() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)

            def encode(text: str, priority: str) -> Any:
                request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=text)])
                return stub.Encode(request, metadata=(("x-priority", priority),), timeout=60)

            with held(core.runner) as gate:
                calls = [asyncio.ensure_future(encode(f"held {i}", "bulk")) for i in range(3)]
                await asyncio.to_thread(_in_progress, server, 3)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await encode("one bulk call too many", "bulk")
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "kept for interactive calls" in str(refused.value.details())
                status, body, headers = await asyncio.to_thread(
                    _post,
                    server,
                    "/v1/embeddings",
                    {"input": "bulk over HTTP"},
                    {"x-priority": "bulk"},
                )
                assert status == 429 and headers["retry-after"]
                assert "kept for interactive calls" in body["error"]["message"]
                calls.append(asyncio.ensure_future(encode("interactive", "interactive")))
                await asyncio.to_thread(_in_progress, server, 4)
                gate.set()
                assert all(len(r.results) == 1 for r in await asyncio.gather(*calls))

    asyncio.run(main())
