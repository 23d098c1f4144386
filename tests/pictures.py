"""Images for tests: tiny random vision checkpoints, generated pictures, and real photos.

`make_vision(root, arch)` writes, for "resnet", "vit" or "convnext", a tiny random
`...ForImageClassification` (3 labels) with its image processor, as `save_pretrained`
writes them: the folder a user would serve. `encoded(...)` makes pictures in every format
the server reads; `photo(name)` is one of scikit-image's sample photos (installed without
its code, for its files: a cat, a cup of coffee).
"""

from __future__ import annotations

import importlib.metadata as md
import io
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextImageProcessor,
    PretrainedConfig,
    ResNetConfig,
    ViTConfig,
    ViTImageProcessor,
)

VISION_ARCHS = ("resnet", "vit", "convnext")
LABELS = ("cat", "dog", "bird")
SIZE = 32


def _config(arch: str) -> PretrainedConfig:
    labels = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    if arch == "resnet":
        return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], **labels)
    if arch == "vit":
        return ViTConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=SIZE,
            patch_size=8,
            **labels,
        )
    return ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, **labels)


def make_vision(root: Path, arch: str) -> Path:
    """A tiny random image classifier and its processor in `root`; returns the folder."""
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(_config(arch))
    model.save_pretrained(root)
    if arch == "vit":
        processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    else:  # resize the shortest edge to SIZE / crop_pct, then crop SIZE: ResNet's way too
        processor = ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=0.875)
    processor.save_pretrained(root)
    return root


def picture(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Smooth random colours (compressible, with structure at every scale)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    image = Image.fromarray(small, "RGBA").resize((width, height), Image.Resampling.BILINEAR)
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def photo(name: str) -> bytes:
    """One of scikit-image's sample photos, e.g. "chelsea.png" (a cat), "coffee.png"."""
    path = md.distribution("scikit-image").locate_file(f"skimage/data/{name}")
    return Path(str(path)).read_bytes()


def gallery() -> list[bytes]:
    """Pictures of several sizes, shapes, modes and formats."""
    return [
        encoded(picture(40, 30, 1)),
        encoded(picture(17, 64, 2), "JPEG", quality=90),
        encoded(picture(50, 50, 3, "RGBA")),  # transparency: laid on white
        encoded(picture(33, 21, 4, "L"), "BMP"),  # grey
        encoded(picture(64, 48, 5, "P"), "GIF"),
        encoded(picture(45, 60, 6), "WEBP", lossless=True),
    ]


def bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid little PNG whose header says it is `width` x `height`: decoding it would take
    gigabytes. Its header chunk's CRC is right, so only the size gives it away."""
    small = encoded(picture(8, 8))
    header = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + small[24:29]
    crc = zlib.crc32(header).to_bytes(4, "big")
    return small[:12] + header + crc + small[33:]
