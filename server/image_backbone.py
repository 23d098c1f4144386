"""What every image backbone shares: an encoded image in, one row per image, one pass that
gives each image's feature map (as positions) and pooled features, and a view for heads.

A kind says how its model computes (`features`) and how an RGB image becomes its input
(`preprocess`); decoding and its limits are server/images.py's.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headserve.plugins.backbones import Backbone, Computed, ImageInput
from headserve.plugins.contract import BackboneView, LinearClassifier, Pixels, Row

from .images import decode, digest


class ImageBackbone(Backbone):
    modality = "image"
    tokenizer = None
    packing = False

    source: Path
    model: torch.nn.Module
    image: ImageInput
    classifier: LinearClassifier | None

    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """[3, height, width] float32 input of an RGB image."""

    @abc.abstractmethod
    def features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [rows, positions, hidden], pooled [rows, hidden]) of a pixel batch."""

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
        positions, pooled = self.features(pixels)
        count, length = positions.shape[0], positions.shape[1]
        mask = torch.ones((count, length), dtype=torch.long, device=positions.device)
        ids = torch.zeros((count, length), dtype=torch.long, device=positions.device)
        return Computed(positions, mask, ids, count * length, pooled)

    def probe_rows(self) -> list[Row]:
        shape = (3, self.image.height, self.image.width)
        values = np.random.default_rng(0).random(shape, dtype=np.float32)
        return [Row((), pixels=Pixels("probe", values))]
