"""Request limits: each is an option, reported by GetModelInfo, and named in the error a
caller gets; the server keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from faults import held
from serving import ServerThread

from headserve.client import Client, InvalidArgumentError, ResourceExhaustedError
from headserve.plugins.contract import HeadSpec
from headserve.server.calls.connections import Connections
from headserve.server.core.limits import RequestLimits
from headserve.server.loading import Settings
from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

LIMITS = RequestLimits(
    max_request_items=3,
    max_item_chars=60,
    max_item_tokens=48,
    max_message_bytes=4096,
    max_concurrent_calls=3,
    max_streams=1,
)


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("classify", "classify", bert.classify),
        HeadSpec("qa", "qa", bert.qa),
    )
    thread = ServerThread(
        Settings(
            model_dir=bert.backbone,
            heads=heads,
            device="cpu",
            request_limits=LIMITS,
            connections=Connections(max_health_watches=1),  # 1 stream + 1 watch < 3 calls
        )
    )
    yield thread
    thread.stop()


def test_limits_are_reported(server: ServerThread) -> None:
    with Client(server.target) as client:
        info = client.model_info()
    assert info.limits is not None
    assert (info.limits.max_request_items, info.limits.max_item_chars) == (3, 60)
    assert (info.limits.max_item_tokens, info.limits.max_message_bytes) == (48, 4096)
    assert (info.limits.max_concurrent_calls, info.limits.max_streams) == (3, 1)


def test_item_limits_name_the_limit_and_the_item(server: ServerThread) -> None:
    with Client(server.target, max_retries=0) as client:
        with pytest.raises(InvalidArgumentError, match=r"items: 4 items.*--max-request-items"):
            client.encode(["a", "b", "c", "d"])
        with pytest.raises(
            InvalidArgumentError, match=r"items\[1\]\.text_pair: is 61 char.*--max-item-chars"
        ):
            client.classify(["fine", ("fine", "x" * 61)])
        with pytest.raises(InvalidArgumentError, match=r"items\[0\]\.context: .*--max-item-chars"):
            client.answer_question([("Who?", "word " * 20)])
        # within the characters, over the tokens: two QA windows of a short-window model
        context = "Bob works in Rome" + "!" * 40  # a token per "!"
        with pytest.raises(
            InvalidArgumentError, match=r"items\[1\]: needs .* backbone tokens.*--max-item-tokens"
        ):
            client.answer_question([("Who?", "Bob works."), ("Where does Bob work?", context)])
        with pytest.raises(InvalidArgumentError, match=r"--max-item-chars"):
            client.tokenize(["y" * 61])
        assert len(client.encode(["a", "b", "c"])) == 3  # at the limits: served


def test_a_response_over_the_message_limit_is_refused_clearly(server: ServerThread) -> None:
    with Client(server.target, max_retries=0) as client:
        with pytest.raises(
            InvalidArgumentError, match=r"response would be .* bytes.*--max-message-bytes"
        ):
            client.encode(
                ["a longer sentence of several words, some more, and more"] * 3, pooling="none"
            )
        replies = list(
            client.encode_stream(
                [
                    client_batch(["short"], "ok"),
                    client_batch(
                        ["a longer sentence of several words, some more, and more"] * 3, "big"
                    ),
                ],
                pooling="none",
            )
        )
        assert replies[0].id == "ok" and replies[0].ok  # 1 short row of token states fits
        assert not replies[1].ok and "--max-message-bytes" in str(replies[1].error)


def client_batch(texts: list[str], id: str):  # type: ignore[no-untyped-def]
    from headserve.client import Batch

    return Batch(texts, id=id)


def test_a_request_over_the_message_limit_gets_resource_exhausted(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text="x" * 10_000)])
        with pytest.raises(grpc.RpcError) as caught:
            stub.Encode(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (caught.value.details() or "")
        assert (
            len(
                stub.Encode(
                    encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text="ok")])
                ).results
            )
            == 1
        )


def _no_open_streams(server: ServerThread) -> None:
    """An earlier test's stream is released once its handler finishes: wait for that."""
    deadline = time.monotonic() + 10
    while server.server.pipeline.streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.server.pipeline.streams == 0


def test_streams_over_the_limit_are_refused_and_the_slot_comes_back(server: ServerThread) -> None:
    _no_open_streams(server)

    async def main() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            first = stub.EncodeStream()
            await first.write(
                encoder_pb2.EncodeRequest(id="1", items=[common_pb2.TextInput(text="a")])
            )
            assert (await first.read()).id == "1"  # the first stream is open and served
            # refused as it opens; nothing is written to it (writing into a stream the
            # server has already ended can surface as INTERNAL in grpc.aio: grpc/grpc#36066)
            second = stub.EncodeStream()
            assert await second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams" in (await second.details() or "")
            await first.done_writing()
            assert await first.read() is grpc.aio.EOF
            await asyncio.to_thread(_no_open_streams, server)
            third = stub.EncodeStream()
            await third.write(
                encoder_pb2.EncodeRequest(id="3", items=[common_pb2.TextInput(text="c")])
            )
            assert (await third.read()).id == "3"
            await third.done_writing()

    asyncio.run(main())


def test_calls_over_the_concurrency_limit_get_resource_exhausted(server: ServerThread) -> None:
    core = server.core
    assert core is not None
    with (
        held(core.runner) as gate,
        Client(server.target, max_retries=0) as client,
        ThreadPoolExecutor(3) as pool,
    ):
        calls = [pool.submit(client.encode, [f"held {i}"]) for i in range(3)]
        deadline = time.monotonic() + 10
        while core.scheduler.rows_in_flight < 3:  # all three calls are in the server
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(ResourceExhaustedError, match="(?i)concurrent rpc limit"):
            client.encode(["one too many"])  # gRPC's own refusal: the cheapest there is
        gate.set()
        assert all(len(f.result(timeout=30)) == 1 for f in calls)
        assert len(client.encode(["after the burst"])) == 1
