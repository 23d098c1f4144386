"""Transfer learning on images: `headserve train-head` on an image folder (or a CSV of image
paths) with a frozen image backbone, and the artifact served beside the checkpoint's own
classifier, giving the trainer's own predictions."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pictures import encoded, make_vision
from PIL import Image
from serving import ServerThread
from transformers import AutoImageProcessor, AutoModel
from transformers.image_transforms import convert_to_rgb

from headserve.client import Client
from headserve.plugins import artifact
from headserve.plugins.artifact import Network
from headserve.plugins.contract import HeadSpec, Row
from headserve.server.loading import Settings
from headserve.server.training.command import TrainOptions, train_head
from headserve.server.training.fit import FitSettings

COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200)}


def swatch(colour: tuple[int, int, int], seed: int) -> bytes:
    """A noisy picture of one dominant colour, of a random size."""
    rng = np.random.default_rng(seed)
    height, width = rng.integers(24, 64, size=2)
    noise = rng.normal(0, 40, (height, width, 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    return encoded(Image.fromarray(pixels), "PNG")


def image_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(swatch(colour, seed * 1000 + c * 100 + i))
    return root


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return make_vision(tmp_path_factory.mktemp("resnet"), "resnet")


def _options(tmp: Path, model: Path, data: Path, **extra) -> TrainOptions:  # type: ignore[no-untyped-def]
    return TrainOptions(
        task="classify",
        data=data,
        out=tmp / "head",
        model=model,
        fit=FitSettings(epochs=60, lr=1e-2, patience=10),
        cache_dir=tmp / "cache",
        device="cpu",
        progress=False,
        **extra,
    )


def test_a_head_trained_on_an_image_folder_serves_beside_the_checkpoints_classifier(
    resnet: Path, tmp_path: Path
) -> None:
    report = train_head(_options(tmp_path, resnet, image_folder(tmp_path / "data")))
    meta = report.meta
    assert (meta.pooling, meta.labels, meta.hidden_size) == ("pooled", ("blue", "red"), 16)
    assert meta.metrics["accuracy"] > meta.metrics["majority_accuracy"]
    again = train_head(_options(tmp_path, resnet, tmp_path / "data"))
    assert again.features_cached  # the second run reads the features from the cache

    heads = (HeadSpec("classify", "classify"), HeadSpec("colours", "trained_classify", report.out))
    server = ServerThread(Settings(model_dir=resnet, heads=heads, device="cpu"))
    try:
        tests = [swatch(COLOURS[name], 9000 + i) for i in range(4) for name in COLOURS]
        with Client(server.target) as client:
            info = {h.name: h for h in client.model_info().heads}
            assert info["colours"].labels == ("blue", "red") and info["colours"].usable
            served = client.classify(tests, heads=["colours", "classify"])
    finally:
        server.stop()
    # the trainer's network on transformers' own pooled features gives the same probabilities
    _, network = artifact.load(report.out)
    processor = AutoImageProcessor.from_pretrained(resnet, use_fast=False)
    base = AutoModel.from_pretrained(resnet).eval()
    rgb = [convert_to_rgb(Image.open(io.BytesIO(d)), return_numpy=True) for d in tests]
    with torch.inference_mode():
        pooled = base(**processor(images=rgb, return_tensors="pt")).pooler_output.flatten(1)
        want = network(pooled).softmax(-1).numpy()
    for result, row in zip(served, want, strict=True):
        colours, own = result.heads
        scores = {s.label: s.probability for s in colours.labels}
        np.testing.assert_allclose([scores["blue"], scores["red"]], row, atol=1e-5)
        assert len(own.labels) == 3  # the checkpoint's classifier answered too


def test_a_csv_of_image_paths_trains_the_same_head(resnet: Path, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "data", per_class=8)
    rows = [(str(p.relative_to(tmp_path)), p.parent.name) for p in sorted(folder.rglob("*.png"))]
    data = tmp_path / "images.csv"
    with data.open("w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *rows, ("data/red/missing.png", "red")])
    with pytest.raises(ValueError, match="line 18: image 'data/red/missing.png': no such file"):
        train_head(_options(tmp_path, resnet, data))
    report = train_head(_options(tmp_path, resnet, data, skip_bad_rows=True))
    assert report.examples == 16 and len(report.skipped) == 1


def test_an_image_head_on_another_backbone_or_a_text_one_is_refused(
    resnet: Path, tmp_path: Path, bert
) -> None:  # type: ignore[no-untyped-def]
    report = train_head(_options(tmp_path, resnet, image_folder(tmp_path / "data", 6)))
    other = make_vision(tmp_path / "other", "convnext")  # pooled size 16 too
    for model in (other, bert.backbone):
        server = ServerThread(
            Settings(
                allow_failed_heads=True,
                model_dir=model,
                heads=(HeadSpec("c", "trained_classify", report.out),),
                device="cpu",
            )
        )
        try:
            with Client(server.target) as client:
                failed = client.model_info().failed_plugins
        finally:
            server.stop()
        assert len(failed) == 1 and "trained on" in failed[0].reason


def test_the_cli_trains_on_an_image_folder(resnet: Path, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "data", per_class=6)
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "headserve"),
            "train-head",
            "--task", "classify",
            "--model", str(resnet),
            "--data", str(folder),
            "--out", str(tmp_path / "head"),
            "--quiet",
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "trained a classify head" in done.stdout
    assert (tmp_path / "head" / "head.json").is_file()


def test_a_tail_head_retrains_the_last_block_and_serves_on_the_shared_pass(
    tmp_path: Path,
) -> None:
    """The tutorial's fine-tuning: EfficientNet-Lite0's last block, copied and retrained under
    a linear layer, served on the shared pass's intermediate features (one backbone pass for
    it and the ImageNet head), giving the trainer's own probabilities."""
    folder = image_folder(tmp_path / "data", per_class=6)
    options = _options(tmp_path, Path("efficientnet-lite0"), folder, network=Network("tail"))
    report = train_head(replace(options, fit=FitSettings(epochs=3, lr=1e-3, patience=3)))
    assert (report.meta.pooling, report.meta.network.kind) == ("intermediate", "tail")
    heads = (HeadSpec("imagenet", "classify"), HeadSpec("colours", "trained_classify", report.out))
    server = ServerThread(Settings(model_dir=Path("efficientnet-lite0"), heads=heads, device="cpu"))
    try:
        tests = [swatch(COLOURS[name], 7000 + i) for i in range(2) for name in COLOURS]
        with Client(server.target) as client:
            before = server.core.runner.rows_computed
            served = client.classify(tests, heads=["colours", "imagenet"])
            assert server.core.runner.rows_computed - before == len(tests)  # one pass for both
        backbone = server.core.backbone
        rows = [Row((), pixels=backbone.read_image(d, 10**8)) for d in tests]
        with torch.inference_mode():
            computed = backbone.run(rows)
            # the shared pass's tail IS the network's own last block: pooled features agree
            fresh = backbone.tail().eval()
            np.testing.assert_allclose(
                fresh(computed.intermediate).numpy(), computed.pooled.numpy(), atol=1e-5
            )
            _, network = artifact.load(report.out, backbone.tail)
            want = network(computed.intermediate).softmax(-1).numpy()
    finally:
        server.stop()
    for result, row in zip(served, want, strict=True):
        scores = {s.label: s.probability for s in result.heads[0].labels}
        np.testing.assert_allclose([scores["blue"], scores["red"]], row, atol=1e-5)
        assert len(result.heads[1].labels) == 1000


def test_a_tail_on_a_backbone_without_one_is_refused(resnet: Path, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "data", per_class=3)
    options = _options(tmp_path, resnet, folder, network=Network("tail"))
    with pytest.raises(ValueError, match="offers no trainable tail"):
        train_head(options)
