"""Image backbones served end to end: transformers ResNet/ViT/ConvNeXt folders against
transformers' own classes, EfficientNet-Lite0 against its package's model, and what a bad
image does to a call, a batch and a stream."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import held
from pictures import LABELS, VISION_ARCHS, bomb, encoded, gallery, make_vision, photo, picture
from PIL import Image
from serving import ServerThread
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification
from transformers.image_transforms import convert_to_rgb

from headserve.client import AsyncClient, Batch, Client, InvalidArgumentError
from headserve.server.backbones.efficientnet import (
    center_crop_box,
    network,
    preprocess,
    weights_file,
)
from headserve.server.core.limits import DECODE_BYTES_PER_PIXEL as PER_PIXEL
from headserve.server.core.limits import RequestLimits
from headserve.server.core.scheduler import Limits
from headserve.server.loading import Settings


@pytest.fixture(scope="module", params=VISION_ARCHS)
def vision(request, tmp_path_factory) -> Iterator[tuple[str, Path, ServerThread]]:  # type: ignore[no-untyped-def]
    folder = make_vision(tmp_path_factory.mktemp(request.param), request.param)
    server = ServerThread(Settings(model_dir=folder, device="cpu"))
    try:
        yield request.param, folder, server
    finally:
        server.stop()


def _reference(folder: Path, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, class probabilities) by transformers' own classes."""
    processor = AutoImageProcessor.from_pretrained(folder, use_fast=False)
    base = AutoModel.from_pretrained(folder).eval()
    classifier = AutoModelForImageClassification.from_pretrained(folder).eval()
    rgb = [convert_to_rgb(Image.open(io.BytesIO(d)), return_numpy=True) for d in images]
    pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = base(pixel_values=pixels)
        if base.config.model_type == "vit":  # its classifier reads the first token
            pooled = out.last_hidden_state[:, 0]
        else:
            pooled = out.pooler_output.flatten(1)
        probs = classifier(pixel_values=pixels).logits.softmax(-1)
    return pooled.numpy(), probs.numpy()


def test_served_features_and_probabilities_equal_transformers(vision) -> None:  # type: ignore[no-untyped-def]
    arch, folder, server = vision
    images = gallery()
    want_features, want_probs = _reference(folder, images)
    with Client(server.target) as client:
        info = client.model_info()
        assert (info.backbone.kind, info.backbone.modality) == ("transformers-image", "image")
        assert info.backbone.model_type == arch and info.backbone.hidden_size == 16
        assert info.backbone.image is not None and info.backbone.image.height == 32
        assert {h.name: h.task for h in info.heads} == {"encode": "encode", "classify": "classify"}
        got = client.encode(images)  # one call: the images share a batch
        np.testing.assert_allclose(got.vectors, want_features, atol=1e-5)
        results = client.classify(images)
    for result, want in zip(results, want_probs, strict=True):
        scores = {s.label: s.probability for s in result.heads[0].labels}
        assert set(scores) == set(LABELS)
        np.testing.assert_allclose([scores[n] for n in LABELS], want, atol=1e-5)


def test_images_batch_across_calls_and_heads_and_a_mixed_batch_equals_separate_ones(
    vision,  # type: ignore[no-untyped-def]
) -> None:
    _, _, server = vision
    images = gallery()
    with Client(server.target) as client:
        together = client.encode(images).vectors
        alone = np.stack([client.encode([image]).vectors[0] for image in images])
        np.testing.assert_allclose(together, alone, atol=1e-5)
        runner = server.core.runner
        before = runner.rows_computed
        vectors = client.encode([images[0], images[0]])  # the same image twice in one call
        np.testing.assert_array_equal(vectors.vectors[0], vectors.vectors[1])
        assert runner.rows_computed - before == 1  # computed once


def test_an_encode_and_a_classify_of_one_image_share_one_backbone_row(
    tmp_path: Path,
) -> None:
    """Call A holds the one model worker; meanwhile an Encode and a Classify of the same
    image queue; released, they run in one pass in which that image is one row."""
    folder = make_vision(tmp_path, "resnet")
    server = ServerThread(Settings(model_dir=folder, device="cpu", limits=Limits(workers=1)))
    first, same = gallery()[0], gallery()[1]
    assert server.core is not None
    runner, scheduler = server.core.runner, server.core.scheduler

    async def main(gate: threading.Event) -> None:
        async with AsyncClient(server.target, max_retries=0, timeout=30) as client:
            holding = asyncio.ensure_future(client.encode([first]))
            await _eventually(lambda: scheduler.busy)  # `first` is on the (held) model
            encoded_ = asyncio.ensure_future(client.encode([same]))
            classified = asyncio.ensure_future(client.classify([same]))
            await _eventually(lambda: scheduler.queued == 2)
            gate.set()
            await asyncio.gather(holding, encoded_, classified)
            assert len((await encoded_).vectors) == 1 and len(await classified) == 1

    before = runner.rows_computed
    try:
        with held(runner) as gate:
            asyncio.run(main(gate))
        assert runner.rows_computed - before == 2  # `first`, then `same` once for both heads
        # the batching metrics count image passes as they count text ones
        registry = scheduler.metrics.registry
        assert registry.get_sample_value("headserve_batch_rows_count") == 2
        # rows as scheduled, one per head (1 + 2); the runner computed the distinct ones (2)
        assert registry.get_sample_value("headserve_batch_rows_sum") == 3
    finally:
        server.stop()


async def _eventually(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_stream_of_images_answers_each_request_and_a_bad_one_alone(vision) -> None:  # type: ignore[no-untyped-def]
    _, _, server = vision
    good = gallery()
    batches = [
        Batch(good[:2], id="a"),
        Batch([good[2], b"\x89PNG broken"], id="b"),
        Batch([good[3]], id="c"),
    ]
    with Client(server.target) as client:
        results = list(client.encode_stream(batches))
    assert [r.id for r in results] == ["a", "b", "c"]
    assert results[0].error is None and results[2].error is None
    error = results[1].error
    assert isinstance(error, InvalidArgumentError)
    assert (error.field, error.item) == ("items[1].image", 1)


def test_text_sent_to_an_image_backbone_is_refused_naming_the_item(vision) -> None:  # type: ignore[no-untyped-def]
    _, _, server = vision
    with Client(server.target, max_retries=0) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            client.encode([gallery()[0], "a cat"])
        assert (refused.value.field, refused.value.item) == ("items[1].image", 1)
        assert "reads image" in refused.value.message
        with pytest.raises(InvalidArgumentError):
            client.tokenize(["a cat"])


def test_an_image_sent_to_a_text_backbone_is_refused_naming_the_item(bert) -> None:  # type: ignore[no-untyped-def]
    server = ServerThread(Settings(model_dir=bert.backbone, device="cpu"))
    try:
        with Client(server.target, max_retries=0) as client:
            with pytest.raises(InvalidArgumentError) as refused:
                client.encode(["fine", gallery()[0]])
            assert (refused.value.field, refused.value.item) == ("items[1].image", 1)
            assert "send text" in refused.value.message
            assert client.model_info().backbone.modality == "text"
    finally:
        server.stop()


BAD_IMAGES = {
    "empty": (b"", "is empty"),
    "not an image": (b"GIF89a? no, just text that claims to be one", "not an image"),
    "truncated PNG": (encoded(picture(64, 64))[:200], "cannot be decoded"),
    "truncated JPEG": (encoded(picture(64, 64), "JPEG")[:300], "cannot be decoded"),
    # a small file that says it is 20000 x 20000: refused from its header, never decoded
    "decompression bomb": (bomb(), "pixels"),  # 20000 x 20000 in a 100-byte file
    "over the pixel limit": (encoded(picture(300, 300)), "more than this server decodes"),
}


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    folder = make_vision(tmp_path_factory.mktemp("limits"), "resnet")
    # room for two of the largest images decoding at once
    limits = RequestLimits(
        max_image_pixels=250 * 250, max_image_decode_bytes=250 * 250 * PER_PIXEL * 2
    )
    server = ServerThread(Settings(model_dir=folder, device="cpu", request_limits=limits))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_clearly_and_nothing_else_breaks(small_limit, name: str) -> None:  # type: ignore[no-untyped-def]
    data, says = BAD_IMAGES[name]
    with Client(small_limit.target, max_retries=0) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            client.classify([gallery()[0], data])
        assert (refused.value.field, refused.value.item) == ("items[1].image", 1)
        assert says in refused.value.message
        assert client.model_info().limits.max_image_pixels == 250 * 250
        assert len(client.classify(gallery())) == 6  # the server goes on


def test_concurrent_decodes_stay_inside_the_decoding_budget(small_limit) -> None:  # type: ignore[no-untyped-def]
    """Each image holds DECODE_BYTES_PER_PIXEL of --max-image-decode-bytes while it decodes: six
    callers of four images each never hold more than two images' worth at once, and every
    byte is given back."""
    images = [encoded(picture(240, 240, seed)) for seed in range(4)]
    answers: list[int] = []

    def caller() -> None:
        with Client(small_limit.target, max_retries=0) as client:
            for _ in range(3):
                answers.append(len(client.classify(images)))

    callers = [threading.Thread(target=caller) for _ in range(6)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=120)
    assert answers == [4] * 18
    budget = small_limit.core.decode_budget
    assert budget.total == 250 * 250 * PER_PIXEL * 2
    assert 240 * 240 * PER_PIXEL <= budget.peak <= budget.total
    assert budget.held == 0
    with Client(small_limit.target) as client:
        assert client.model_info().limits.max_image_decode_bytes == budget.total


def test_efficientnet_lite0_classifies_the_cat_and_the_coffee(efficientnet: ServerThread) -> None:
    with Client(efficientnet.target) as client:
        info = client.model_info()
        assert (info.backbone.kind, info.backbone.hidden_size) == ("efficientnet-lite", 1280)
        assert info.backbone.image is not None and info.backbone.image.width == 224
        imagenet = next(h for h in info.heads if h.name == "imagenet")
        assert len(imagenet.labels) == len(set(imagenet.labels)) == 1000
        cat, coffee = client.classify([photo("chelsea.png"), photo("coffee.png")], top_k=3)
    assert cat.heads[0].top.label in {"tabby", "tiger cat", "Egyptian cat"}
    assert coffee.heads[0].top.label == "espresso"


def test_efficientnet_features_and_probabilities_equal_the_package_model(
    efficientnet: ServerThread,
) -> None:
    images = [photo("chelsea.png"), photo("coffee.png"), *gallery()]
    model = network("efficientnet-lite0")
    model.load_state_dict(torch.load(weights_file("efficientnet-lite0"), weights_only=True))
    model.eval()
    rgb = [Image.open(io.BytesIO(d)) for d in images]
    batch = np.stack(
        [preprocess(Image.fromarray(convert_to_rgb(i, return_numpy=True)), 224) for i in rgb]
    )
    with torch.inference_mode():
        pixels = torch.from_numpy(batch)
        want = model(pixels).softmax(-1).numpy()
        # the pooled features the package's own classifier (_fc) reads: the encode head's
        pooled = model._avg_pooling(model.extract_features(pixels)).flatten(1).numpy()
    with Client(efficientnet.target) as client:
        results = client.classify(images, heads=["imagenet"])
        np.testing.assert_allclose(client.encode(images).vectors, pooled, atol=1e-5)
    labels = [s.label for s in results[0].heads[0].labels]
    order = {label: i for i, label in enumerate(client_labels(efficientnet))}
    for result, row in zip(results, want, strict=True):
        got = np.zeros(1000)
        for s in result.heads[0].labels:
            got[order[s.label]] = s.probability
        np.testing.assert_allclose(got, row, atol=1e-5)
    assert len(labels) == 1000


def client_labels(server: ServerThread) -> list[str]:
    with Client(server.target) as client:
        return list(next(h for h in client.model_info().heads if h.name == "imagenet").labels)


def test_efficientnet_preprocessing_is_googles_eval_crop_and_lite_scaling() -> None:
    # the cat photo is 451 x 300: a 262-pixel square (224/256 of 300) from its center
    assert center_crop_box(451, 300, 224) == (95, 19, 357, 281)
    white = preprocess(Image.new("RGB", (300, 200), (255, 255, 255)), 224)
    black = preprocess(Image.new("RGB", (300, 200), (0, 0, 0)), 224)
    assert white.shape == (3, 224, 224)
    np.testing.assert_allclose(white, (255 - 127) / 128, atol=1e-6)
    np.testing.assert_allclose(black, -127 / 128, atol=1e-6)


@pytest.fixture(scope="module")
def efficientnet() -> Iterator[ServerThread]:
    server = ServerThread(Settings(model_dir=Path("efficientnet-lite0"), device="cpu"))
    try:
        yield server
    finally:
        server.stop()
