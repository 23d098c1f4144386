"""What idle callers may hold: streams and health watches (tokenless with --open-health) have
budgets of their own that together stay below --max-concurrent-calls, so unary calls always
find room; a stream that sends nothing is ended, and an idle connection is closed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving import ServerThread

from headserve.client import Client
from headserve.plugins.contract import HeadSpec
from headserve.server.calls.connections import Connections
from headserve.server.calls.security import Security
from headserve.server.core.limits import RequestLimits
from headserve.server.loading import Settings
from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

TOKEN = "a-token-of-at-least-16-chars"


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = ServerThread(
        Settings(
            model_dir=bert.backbone,
            heads=(HeadSpec("encode", "encode"),),
            device="cpu",
            request_limits=RequestLimits(max_concurrent_calls=6, max_streams=2),
            security=Security(tokens=(TOKEN,), open_health=True),
            connections=Connections(
                max_health_watches=2, stream_idle_timeout=0.5, connection_idle_seconds=1.0
            ),
        )
    )
    yield thread
    thread.stop()


def _request(id: str) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(id=id, items=[common_pb2.TextInput(text="held open")])


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def test_streams_cannot_take_the_unary_calls_place(server: ServerThread) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            streams = []
            for index in range(2):  # --max-streams, with the watches below --max-concurrent-calls
                stream = stub.EncodeStream(metadata=AUTH)
                await stream.write(_request(str(index)))
                assert (await stream.read()).id == str(index)
                streams.append(stream)
            third = stub.EncodeStream(metadata=AUTH)
            assert await third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams" in (await third.details() or "")
            for _ in range(3):  # the unary calls still find room
                reply = await stub.Encode(
                    encoder_pb2.EncodeRequest(items=[_request("u").items[0]]), metadata=AUTH
                )
                assert len(reply.results) == 1
            for stream in streams:
                stream.cancel()

    asyncio.run(main())


def test_tokenless_health_watches_are_capped_apart_from_the_calls(server: ServerThread) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = []
            for _ in range(2):  # --max-health-watches, no token (--open-health)
                watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
                watches.append(watch)
            third = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert await third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-health-watches" in (await third.details() or "")
            checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            stub = encoder_pb2_grpc.EncoderStub(channel)
            for _ in range(4):  # every call's place is still free
                reply = await stub.Encode(
                    encoder_pb2.EncodeRequest(items=[_request("u").items[0]]), metadata=AUTH
                )
                assert len(reply.results) == 1
            for watch in watches:
                watch.cancel()

    asyncio.run(main())


def test_a_stream_that_sends_nothing_is_ended(server: ServerThread) -> None:
    async def main() -> float:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stream = encoder_pb2_grpc.EncoderStub(channel).EncodeStream(metadata=AUTH)
            await stream.write(_request("only"))
            assert (await stream.read()).id == "only"
            started = time.monotonic()
            assert await stream.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "--stream-idle-timeout" in (await stream.details() or "")
            return time.monotonic() - started

    waited = asyncio.run(main())
    assert 0.4 < waited < 5


def test_an_idle_connection_is_closed(server: ServerThread) -> None:
    states: list[grpc.ChannelConnectivity] = []
    idle_again = threading.Event()

    def seen(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states and state == grpc.ChannelConnectivity.IDLE:
            idle_again.set()

    with grpc.insecure_channel(server.target) as channel:
        channel.subscribe(seen, try_to_connect=False)
        with Client(server.target, token=TOKEN) as client:
            assert client.model_info().backbone.model_type == "bert"
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        # --connection-idle-seconds 1: the server closes it (GOAWAY), the channel goes idle
        assert idle_again.wait(10), states
        channel.unsubscribe(seen)
