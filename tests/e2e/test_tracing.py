"""OpenTelemetry traces of real calls, received by a real OTLP/gRPC collector endpoint.

The server is the CLI on the packaged model with `--otlp-endpoint`; the caller is the typed
client inside a span of the caller's own (OpenTelemetry SDK on the caller's side), so the
server's spans must continue the caller's trace.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from otlp import ERROR, SERVER, Collector, Received
from serving import CliServer, start_cli_server

from headserve.client import Batch, Client, NotFoundError

pytestmark = pytest.mark.e2e
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # ms between the server's span exports
caller = TracerProvider().get_tracer("the-caller")


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def server(collector: Collector) -> Iterator[CliServer]:
    started = start_cli_server(
        ["--otlp-endpoint", collector.endpoint], env={**os.environ, **FAST_EXPORT}
    )
    yield started
    started.proc.send_signal(signal.SIGTERM)
    started.proc.wait(timeout=30)


def _trace(collector: Collector, trace_id: str, count: int) -> list[Received]:
    """The first `count` spans of one trace, once they have all arrived."""
    spans = collector.wait_for(lambda got: sum(s.trace_id == trace_id for s in got) >= count)
    return [s for s in spans if s.trace_id == trace_id]


def _children(spans: list[Received], parent: Received) -> dict[str, Received]:
    return {s.name: s for s in spans if s.parent_span_id == parent.span_id}


def test_a_call_continues_the_callers_trace_with_queue_backbone_and_head_spans(
    collector: Collector, server: CliServer
) -> None:
    with Client(server.target) as client, caller.start_as_current_span("checkout") as parent:
        result = client.classify(["I loved this film."], heads=["sentiment"])
    context = parent.get_span_context()
    trace_id, caller_span = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    spans = _trace(collector, trace_id, 5)
    (rpc,) = [s for s in spans if s.kind == SERVER]
    assert rpc.parent_span_id == caller_span  # the caller's traceparent was continued
    assert rpc.name == "/headserve.v1.Classifier/Classify"
    assert rpc.attributes["rpc.system"] == "grpc"
    assert rpc.attributes["rpc.service"] == "headserve.v1.Classifier"
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    assert rpc.attributes["headserve.request_id"] == result.request_id
    assert rpc.resource["service.name"] == "headserve"
    children = _children(spans, rpc)
    assert set(children) == {"prepare", "queue", "backbone", "head sentiment"}
    prepare, queue = children["prepare"], children["queue"]
    backbone, head = children["backbone"], children["head sentiment"]
    assert prepare.attributes["headserve.items"] == 1
    assert prepare.attributes["headserve.heads"] == ["sentiment"]
    assert queue.attributes["headserve.rows"] == 1
    # the batch carried this call alone: its tokens are the call's
    assert backbone.attributes["headserve.batch.rows"] == 1
    assert backbone.attributes["headserve.batch.real_tokens"] == result.usage.input_tokens
    assert backbone.attributes["headserve.batch.padded_tokens"] >= result.usage.input_tokens
    assert backbone.attributes["headserve.batch.worker"].startswith("headserve-model")
    assert head.attributes["headserve.head"] == "sentiment"
    assert head.attributes["headserve.head.rows"] == 1
    assert head.attributes["headserve.head.failed"] is False
    assert (
        head.attributes["headserve.batch.number"] == backbone.attributes["headserve.batch.number"]
    )
    # in the order they happened, all within the RPC
    assert rpc.start_ns <= prepare.start_ns <= prepare.end_ns <= queue.start_ns + 1000
    assert queue.end_ns <= backbone.start_ns + 1000 and backbone.end_ns <= head.start_ns + 1000
    assert head.end_ns <= rpc.end_ns


def test_a_stream_gets_a_span_per_request_message(collector: Collector, server: CliServer) -> None:
    batches = [Batch(["one sentence", "and another"], id="a"), Batch(["  "], id="b")]
    with Client(server.target) as client, caller.start_as_current_span("ingest") as parent:
        outcomes = list(client.encode_stream(batches))
    assert outcomes[0].ok and not outcomes[1].ok
    spans = _trace(collector, f"{parent.get_span_context().trace_id:032x}", 7)
    (rpc,) = [s for s in spans if s.kind == SERVER]
    assert rpc.name == "/headserve.v1.Encoder/EncodeStream"
    assert rpc.attributes["headserve.request_id"] == outcomes[0].request_id
    messages = sorted(
        (s for s in spans if s.parent_span_id == rpc.span_id),
        key=lambda s: s.attributes["headserve.stream.message_id"],
    )
    assert [m.name for m in messages] == ["headserve.v1.Encoder/EncodeStream message"] * 2
    good, bad = messages
    assert good.attributes["headserve.stream.message_id"] == "a"
    assert good.attributes["headserve.items"] == 2
    assert good.attributes["headserve.request_id"] == outcomes[0].request_id
    assert set(_children(spans, good)) == {"prepare", "queue", "backbone", "head encode"}
    assert bad.attributes["headserve.stream.message_id"] == "b"
    assert bad.status_code == ERROR and bad.attributes["rpc.grpc.status_code"] == 3
    assert _children(spans, bad) == {}  # refused before it was prepared


def test_a_failed_call_marks_its_span_with_the_code(
    collector: Collector, server: CliServer
) -> None:
    with Client(server.target, max_retries=0) as client:
        with caller.start_as_current_span("lookup") as parent:
            with pytest.raises(NotFoundError) as failed:
                client.classify(["fine"], heads=["no-such-head"])
    (rpc,) = _trace(collector, f"{parent.get_span_context().trace_id:032x}", 1)
    assert rpc.status_code == ERROR and rpc.attributes["rpc.grpc.status_code"] == 5
    assert rpc.attributes["headserve.request_id"] == failed.value.request_id


def test_a_call_without_a_caller_trace_starts_its_own(
    collector: Collector, server: CliServer
) -> None:
    with Client(server.target) as client:
        result = client.encode(["no trace on this side"])
    spans = collector.wait_for(
        lambda got: any(s.attributes.get("headserve.request_id") == result.request_id for s in got)
    )
    (rpc,) = [s for s in spans if s.attributes.get("headserve.request_id") == result.request_id]
    assert rpc.parent_span_id == "" and rpc.kind == SERVER


def test_the_otel_environment_variables_turn_tracing_on(collector: Collector) -> None:
    env = {
        **os.environ,
        **FAST_EXPORT,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        "OTEL_SERVICE_NAME": "embeddings-eu",
    }
    server = start_cli_server(["--plugins", "encode"], env=env)
    try:
        with Client(server.target) as client, caller.start_as_current_span("env") as parent:
            client.encode(["traced by the environment"])
        spans = _trace(collector, f"{parent.get_span_context().trace_id:032x}", 4)
        assert {s.resource["service.name"] for s in spans} == {"embeddings-eu"}
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
