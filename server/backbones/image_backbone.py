"""What every image backbone shares: an encoded image in, one row per image, one pass that
gives each image's feature map (as positions) and pooled features, and a view for heads.

A kind says how its model computes (`features`) and how an RGB image becomes its input
(`preprocess`); decoding and its limits are backbones/images.py's.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from headserve.plugins.backbones import Backbone, Computed, ImageInput, LoadOptions
from headserve.plugins.contract import BackboneView, LinearClassifier, Pixels, Row

from .images import decode, digest


def refuse_quantize(options: LoadOptions) -> None:
    """Image backbones run on torch, unquantized: --quantize is refused, not ignored."""
    if options.quantize != "none":
        raise ValueError(
            f"--quantize {options.quantize}: image backbones run on torch in float; "
            "quantization is for text backbones on ONNX Runtime"
        )


class ImageFeatures(NamedTuple):
    positions: torch.Tensor  # [rows, positions, hidden]: the last feature map's cells
    pooled: torch.Tensor  # [rows, hidden]
    intermediate: torch.Tensor | None = None  # the tail's input, when the kind has a tail


class ImageBackbone(Backbone):
    modality = "image"
    tokenizer = None
    packing = False
    # EfficientNet-Lite0 on 2 cores (bench/images.py): 2 workers x 1 thread ran 82 images/s at
    # batch 1, 57 at 8, 13 at 32; served at 32 callers, batches of 4 gave 58 images/s (p99
    # 0.7 s) against 43 (p99 2.8 s) with the text default of 64
    cpu_batch_rows = 4

    source: Path
    model: torch.nn.Module
    image: ImageInput
    classifier: LinearClassifier | None

    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """[3, height, width] float32 input of an RGB image."""

    @abc.abstractmethod
    def features(self, pixels: torch.Tensor) -> ImageFeatures:
        """What one pass computes of a pixel batch."""

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def view(self) -> BackboneView:
        return BackboneView(
            config=self.config,
            tokenizer=None,  # type: ignore[arg-type]  # an image backbone has none
            device=self.device,
            dtype=self.dtype,
            max_length=1,
            source=self.source,
            module=self.model,
            modality="image",
            kind=self.kind,
            classifier=self.classifier,
            tail=self.tail,
        )

    def read_image(self, data: bytes, max_pixels: int) -> Pixels:
        values = self.preprocess(decode(data, max_pixels))
        return Pixels(digest(data, self.image.preprocessing), values.astype(np.float32))

    def run(self, rows: Sequence[Row]) -> Computed:
        """One pass over image rows."""
        batch = np.stack([row.pixels.values for row in rows if row.pixels is not None])
        if len(batch) != len(rows):
            raise ValueError("an image backbone got a row without pixels")
        pixels = torch.from_numpy(batch).to(device=self.device, dtype=self.dtype)
        positions, pooled, intermediate = self.features(pixels)
        count, length = positions.shape[0], positions.shape[1]
        mask = torch.ones((count, length), dtype=torch.long, device=positions.device)
        ids = torch.zeros((count, length), dtype=torch.long, device=positions.device)
        return Computed(positions, mask, ids, count * length, pooled, intermediate)

    def probe_rows(self) -> list[Row]:
        shape = (3, self.image.height, self.image.width)
        values = np.random.default_rng(0).random(shape, dtype=np.float32)
        return [Row((), pixels=Pixels("probe", values))]
