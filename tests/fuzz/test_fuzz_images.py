"""Fuzzing image items: pictures in every format, then cut short, bit-flipped, swapped for
noise or for a header that promises gigapixels, mixed with text items, sent to Encode and
Classify (unary and streams) of an image backbone (a tiny ResNet), and to a text backbone.

Each call ends with a documented code and a message, never INTERNAL; each stream answers
every request, a bad image failing only its own; and afterwards the server still answers
a good call correctly. Same profiles as the rest of the fuzz suite (conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from outcomes import Outcomes
from pictures import bomb, encoded, make_vision, picture
from serving import ServerThread
from test_fuzz_rpcs import DOCUMENTED, DOCUMENTED_IN_STREAM, TIMEOUT

from headserve.server.core.limits import RequestLimits
from headserve.server.loading import Settings
from headserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
)

MAX_PIXELS = 200 * 200
FORMATS = st.sampled_from(
    [("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("WEBP", {}), ("BMP", {})]
)
MODES = st.sampled_from(["RGB", "RGBA", "L", "P", "1", "CMYK", "I;16"])


@st.composite
def pictures(draw: st.DrawFn) -> bytes:
    width, height = draw(st.integers(1, 260)), draw(st.integers(1, 260))
    fmt, options = draw(FORMATS)
    mode = draw(MODES)
    image = picture(width, height, draw(st.integers(0, 9)), "RGB").convert(mode)
    try:
        return encoded(image, fmt, **options)
    except (OSError, ValueError, KeyError):  # a mode that format cannot store
        return encoded(image.convert("RGB"), fmt, **options)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(pictures()))
    how = draw(st.sampled_from(["cut", "flip", "both"]))
    if how in ("cut", "both"):
        data = data[: draw(st.integers(0, len(data)))]
    if how in ("flip", "both") and data:
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


images = st.one_of(
    pictures(),
    damaged(),
    st.binary(max_size=256),
    st.builds(bomb, st.integers(1, 70_000), st.integers(1, 70_000)),
)
items = st.lists(
    st.one_of(
        images.map(lambda d: common_pb2.TextInput(image=common_pb2.Image(data=d))),
        st.text(max_size=20).map(lambda t: common_pb2.TextInput(text=t)),
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    folder = make_vision(tmp_path_factory.mktemp("fuzz-resnet"), "resnet")
    limits = RequestLimits(max_image_pixels=MAX_PIXELS)
    server = ServerThread(Settings(model_dir=folder, device="cpu", request_limits=limits))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def channel(image_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(image_server.target) as channel:
        yield channel


GOOD = common_pb2.TextInput(image=common_pb2.Image(data=encoded(picture(40, 30))))


def _still_serving(channel: grpc.Channel) -> None:
    reply = encoder_pb2_grpc.EncoderStub(channel).Encode(
        encoder_pb2.EncodeRequest(items=[GOOD]), timeout=TIMEOUT
    )
    assert len(reply.results) == 1 and len(reply.results[0].vector) == 16


def _unary(name: str, call, request, outcomes: Outcomes) -> None:  # type: ignore[no-untyped-def]
    try:
        reply = call(request, timeout=TIMEOUT)
    except grpc.RpcError as error:
        outcomes.call(name, error.code().name)
        assert error.code() in DOCUMENTED, f"{name} ended {error.code().name}: {error.details()}"
        assert error.details()
    else:
        outcomes.call(name, "OK")
        assert len(reply.results) == len(request.items)


@given(batch=items)
def test_encode_images(batch, channel: grpc.Channel, outcomes: Outcomes) -> None:  # type: ignore[no-untyped-def]
    stub = encoder_pb2_grpc.EncoderStub(channel)
    _unary("Encode(images)", stub.Encode, encoder_pb2.EncodeRequest(items=batch), outcomes)
    _still_serving(channel)


@given(batch=items)
def test_classify_images(batch, channel: grpc.Channel, outcomes: Outcomes) -> None:  # type: ignore[no-untyped-def]
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    _unary("Classify(images)", stub.Classify, classifier_pb2.ClassifyRequest(items=batch), outcomes)
    _still_serving(channel)


@given(batches=st.lists(items, min_size=1, max_size=4))
def test_encode_stream_images(batches, channel: grpc.Channel, outcomes: Outcomes) -> None:  # type: ignore[no-untyped-def]
    requests = [encoder_pb2.EncodeRequest(id=str(i), items=b) for i, b in enumerate(batches)]
    stub = encoder_pb2_grpc.EncoderStub(channel)
    replies = list(stub.EncodeStream(iter(requests), timeout=TIMEOUT))
    outcomes.call("EncodeStream(images)", "OK")
    assert [r.id for r in replies] == [r.id for r in requests]
    for request, reply in zip(requests, replies, strict=True):
        if reply.WhichOneof("outcome") == "response":
            outcomes.request("EncodeStream(images)", "response")
            assert len(reply.response.results) == len(request.items)
        else:
            outcomes.request("EncodeStream(images)", str(reply.error.code))
            assert reply.error.code in DOCUMENTED_IN_STREAM and reply.error.message
    _still_serving(channel)


@given(batch=items)
def test_images_to_a_text_backbone(batch, fuzz_server: ServerThread, outcomes: Outcomes) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(fuzz_server.target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        _unary(
            "Encode(images, text backbone)",
            stub.Encode,
            encoder_pb2.EncodeRequest(items=batch),
            outcomes,
        )
