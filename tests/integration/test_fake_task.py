"""A task the server has never heard of, added by its description alone: its contract (a
service built here, as protoc would build it from a .proto file) and a `Task` naming its RPC,
its answer and its HTTP route. Nothing else of the server is touched, and it is served on
every transport: gRPC (unary and stream, health, reflection), the HTTP endpoint, and the Ray
Serve replica (its methods called as Serve's proxy calls them)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving import ServerThread

from headserve.plugins.contract import HeadSpec
from headserve.server.core.engine import Core
from headserve.server.core.scheduler import Limits
from headserve.server.errors import InvalidArgument
from headserve.server.loading import Settings
from headserve.server.tasks import TASKS, Route, Task
from headserve.server.tasks.wire import Call, text_items
from headserve.server.transports import ray_serve
from headserve.v1 import common_pb2

TEXTS = ["Alice works in Paris.", "the quick brown fox jumps"]


def _contract() -> Any:
    """fake.v1.Counter: Count (and CountStream) tells how many tokens each item is."""
    pool = descriptor_pool.Default()
    proto = descriptor_pb2.FileDescriptorProto(
        name="fake/v1/counter.proto",
        package="fake.v1",
        syntax="proto3",
        dependency=[common_pb2.DESCRIPTOR.name, status_pb2.DESCRIPTOR.name],
    )
    field = descriptor_pb2.FieldDescriptorProto
    request = proto.message_type.add(name="CountRequest")
    request.field.add(name="id", number=1, type=field.TYPE_STRING)
    request.field.add(
        name="items",
        number=2,
        type=field.TYPE_MESSAGE,
        type_name=".headserve.v1.TextInput",
        label=field.LABEL_REPEATED,
    )
    response = proto.message_type.add(name="CountResponse")
    response.field.add(name="tokens", number=1, type=field.TYPE_INT32, label=field.LABEL_REPEATED)
    reply = proto.message_type.add(name="CountStreamResponse")
    reply.oneof_decl.add(name="outcome")
    reply.field.add(name="id", number=1, type=field.TYPE_STRING)
    reply.field.add(
        name="response",
        number=2,
        type=field.TYPE_MESSAGE,
        type_name=".fake.v1.CountResponse",
        oneof_index=0,
    )
    reply.field.add(
        name="error",
        number=3,
        type=field.TYPE_MESSAGE,
        type_name=".google.rpc.Status",
        oneof_index=0,
    )
    service = proto.service.add(name="Counter")
    service.method.add(
        name="Count", input_type=".fake.v1.CountRequest", output_type=".fake.v1.CountResponse"
    )
    service.method.add(
        name="CountStream",
        input_type=".fake.v1.CountRequest",
        output_type=".fake.v1.CountStreamResponse",
        client_streaming=True,
        server_streaming=True,
    )
    try:
        return pool.FindFileByName(proto.name)
    except KeyError:
        return pool.Add(proto)


FILE = _contract()
SERVICE = FILE.services_by_name["Counter"]
CountRequest = message_factory.GetMessageClass(FILE.message_types_by_name["CountRequest"])
CountResponse = message_factory.GetMessageClass(FILE.message_types_by_name["CountResponse"])
CountReply = message_factory.GetMessageClass(FILE.message_types_by_name["CountStreamResponse"])


def _counts(core: Core, items: list[Any]) -> list[int]:
    return [len(t.ids) for t in core.tokenize(items, add_special_tokens=True, truncate=False)]


async def count(core: Core, request: Any, call: Call) -> Any:
    if not request.items:
        raise InvalidArgument("items", "is empty: send at least one item")
    return CountResponse(tokens=_counts(core, text_items(request.items)))


async def count_json(core: Core, body: Any, call: Call) -> Any:
    from headserve.plugins.tasks import TextItem

    return {"tokens": _counts(core, [TextItem(text) for text in body["input"]])}


FAKE = Task(
    "count",
    SERVICE,
    "Count",
    count,
    http=(Route("POST", "/v1/count", count_json),),
)


@pytest.fixture(scope="module")
def settings(bert) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        model_dir=bert.backbone,
        heads=(HeadSpec("encode", "encode", None, {"pooling": "mean"}),),
        device="cpu",
        http_port=0,
        limits=Limits(workers=1),
    )


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[ServerThread]:
    thread = ServerThread(settings, tasks=(*TASKS, FAKE))
    yield thread
    thread.stop()


def _request(texts: list[str], id: str = "") -> Any:
    return CountRequest(id=id, items=[common_pb2.TextInput(text=t) for t in texts])


def _expected(server: ServerThread) -> list[int]:
    assert server.core is not None
    tokenizer = server.core.backbone.tokenizer
    return [len(tokenizer(text)["input_ids"]) for text in TEXTS]


def test_the_fake_task_is_served_on_grpc(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        unary = channel.unary_unary(
            "/fake.v1.Counter/Count",
            request_serializer=CountRequest.SerializeToString,
            response_deserializer=CountResponse.FromString,
        )
        response, call = unary.with_call(_request(TEXTS), timeout=10)
        assert list(response.tokens) == _expected(server)
        assert dict(call.initial_metadata())["x-request-id"]  # through the call pipeline
        with pytest.raises(grpc.RpcError) as refused:
            unary(_request([]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "items: is empty" in (refused.value.details() or "")

        stream = channel.stream_stream(
            "/fake.v1.Counter/CountStream",
            request_serializer=CountRequest.SerializeToString,
            response_deserializer=CountReply.FromString,
        )
        replies = list(stream(iter([_request(TEXTS[:1], "a"), _request([], "b")]), timeout=10))
        assert [r.id for r in replies] == ["a", "b"]
        assert list(replies[0].response.tokens) == _expected(server)[:1]
        assert replies[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

        health = health_pb2_grpc.HealthStub(channel)
        checked = health.Check(health_pb2.HealthCheckRequest(service="fake.v1.Counter"))
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        listed = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in listed for s in r.list_services_response.service}
        assert "fake.v1.Counter" in names and "headserve.v1.Encoder" in names


def test_the_fake_task_is_served_on_http(server: ServerThread) -> None:
    assert server.server.http is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server.http.port}/v1/count",
        data=json.dumps({"input": TEXTS}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read()) == {"tokens": _expected(server)}
        assert response.headers["x-request-id"]


class RayContext:
    """What Serve's proxy hands a replica method: RayServegRPCContext's surface."""

    def __init__(self) -> None:
        self.code: Any = None
        self.details = ""
        self.trailing: list[tuple[str, str]] = []

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("x-request-id", "fake-task-call")]

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def set_code(self, code: Any) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: list[tuple[str, str]]) -> None:
        self.trailing += metadata


def test_the_fake_task_is_served_by_the_ray_replica(
    server: ServerThread, settings: Settings
) -> None:
    replica_class = ray_serve.replica((*TASKS, FAKE))
    assert callable(replica_class.Count) and callable(replica_class.CountStream)

    async def main() -> None:
        replica = replica_class.__new__(replica_class)
        await replica.__init__(settings)  # as Ray constructs it
        try:
            context = RayContext()
            response = await replica.Count(_request(TEXTS), context)  # type: ignore[attr-defined]
            assert list(response.tokens) == _expected(server)
            assert ("x-request-id", "fake-task-call") in context.trailing
            refused = RayContext()
            empty = await replica.Count(_request([]), refused)  # type: ignore[attr-defined]
            assert empty == CountResponse() and refused.code == grpc.StatusCode.INVALID_ARGUMENT

            async def requests() -> AsyncIterator[Any]:
                yield _request(TEXTS[1:], "only")

            replies = [
                reply
                async for reply in replica.CountStream(requests(), RayContext())  # type: ignore[attr-defined]
            ]
            assert [r.id for r in replies] == ["only"]
            assert list(replies[0].response.tokens) == _expected(server)[1:]
        finally:
            core = replica._state.core
            assert core is not None
            await core.scheduler.stop()

    asyncio.run(main())
