"""The image backbone kind for transformers checkpoints: ResNet, ViT and ConvNeXt folders.

Built-in kind "transformers-image". The folder is what `save_pretrained` writes for an
`...ForImageClassification` (or a base `...Model`) and its image processor
(`preprocessor_config.json`). Preprocessing IS that processor (its PIL implementation:
torchvision is not there), so a served row equals what transformers feeds the model.

What a pass returns, per image: the last feature map as positions [rows, positions, hidden]
(a CNN's HxW cells, a ViT's tokens) and the pooled output [rows, hidden] that the checkpoint's
own classifier reads: a CNN's pooler (average pool; ConvNeXt's includes its layer norm), a
ViT's first token after the final layer norm. The checkpoint's classifier, when it has one,
is offered to heads as `BackboneView.classifier` (the default `classify` head serves it).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PretrainedConfig

from headserve.plugins.backbones import ImageInput, LoadOptions
from headserve.plugins.contract import (
    CONTRACT_VERSION,
    HeadSpec,
    LinearClassifier,
)

from .backbone import model_type_of as _model_type
from .backbone import pick_device, pick_dtype, refuse_pickle
from .image_backbone import ImageBackbone, ImageFeatures, refuse_quantize

log = logging.getLogger(__name__)

MODEL_TYPES = ("resnet", "vit", "convnext")  # each tested against transformers' own classes
TOKEN_POOLED = ("vit",)  # pooled = the first token of the last (normed) hidden state


@dataclass
class VisionBackbone(ImageBackbone):
    kind = "transformers-image"

    source: Path
    model: torch.nn.Module
    processor: Any  # a transformers image processor (PIL implementation)
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    image: ImageInput
    classifier: LinearClassifier | None
    max_length: int = 1

    @property
    def config(self) -> PretrainedConfig:
        config: PretrainedConfig = getattr(self.model, "config")  # noqa: B009
        return config

    @property
    def hidden_size(self) -> int:  # a CNN's config has hidden_sizes, one per stage
        return pooled_size(self.config)

    @property
    def num_layers(self) -> int:
        c = self.config
        return int(getattr(c, "num_hidden_layers", 0) or sum(getattr(c, "depths", ()) or ()))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        values: np.ndarray = self.processor(images=image, return_tensors="np")["pixel_values"][0]
        return values

    def features(self, pixels: torch.Tensor) -> ImageFeatures:
        out = self.model(pixel_values=pixels)
        last = out.last_hidden_state
        if self.config.model_type in TOKEN_POOLED:
            return ImageFeatures(last, last[:, 0])
        pooled = out.pooler_output.flatten(1)
        return ImageFeatures(last.flatten(2).transpose(1, 2), pooled)


def pooled_size(config: PretrainedConfig) -> int:
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1] if sizes else config.hidden_size)  # as BackboneView.hidden_size


def _fields(size: Any) -> dict[str, int]:
    """The set entries of a processor's size (a dict, or transformers 5's SizeDict)."""
    keys = ("height", "width", "shortest_edge", "longest_edge")
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    return {k: int(v) for k in keys if (v := get(k)) is not None}


def _steps(processor: Any) -> tuple[int, int, str]:
    """(height, width, the steps in words) of a transformers image processor. The size is
    what the processor makes of a probe image: the model's input."""
    probe = Image.new("RGB", (64, 48))
    height, width = processor(images=probe, return_tensors="np")["pixel_values"].shape[-2:]
    steps = []
    if getattr(processor, "do_resize", False):
        size = ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in _fields(processor.size or {}).items()
        )
        resample = getattr(processor, "resample", None)
        how = Image.Resampling(resample).name.lower() if resample is not None else "default"
        crop_pct = getattr(processor, "crop_pct", None)
        steps.append(
            f"resize {size}" + (f" / crop_pct {crop_pct}" if crop_pct else "") + f" ({how})"
        )
        if crop_pct:
            steps.append(f"center crop {height}x{width}")
    if getattr(processor, "do_center_crop", False):
        steps.append(f"center crop {height}x{width}")
    if getattr(processor, "do_rescale", False):
        steps.append(f"rescale x{processor.rescale_factor:.6g}")
    if getattr(processor, "do_normalize", False):
        steps.append("normalize (x - mean) / std")
    return int(height), int(width), "RGB, " + ", ".join(steps)


def _checkpoint_classifier(folder: Path, config: PretrainedConfig) -> LinearClassifier | None:
    """The Linear layer under `classifier.` in the folder's safetensors, with its labels."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith("classifier."):
                    tensors[key] = f.get_tensor(key)
    weights = [k for k, v in tensors.items() if k.endswith(".weight") and v.dim() == 2]
    if len(weights) != 1:
        return None
    weight = tensors[weights[0]].float()
    bias = tensors.get(weights[0].removesuffix("weight") + "bias")
    if bias is None:
        bias = torch.zeros(weight.shape[0])
    id2label = {int(i): str(label) for i, label in (config.id2label or {}).items()}
    labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(weight.shape[0]))
    multi = config.problem_type == "multi_label_classification"
    return LinearClassifier(weight, bias.float(), labels, multi)


def load(source: Path, options: LoadOptions) -> VisionBackbone:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    refuse_quantize(options)
    started = time.perf_counter()
    model_type = _model_type(source)
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not an image model this server runs "
            f"({', '.join(MODEL_TYPES)})"
        )
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    refuse_pickle(source, options.allow_pickle)
    config = AutoConfig.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
    if not (source / "preprocessor_config.json").is_file():
        raise ValueError(f"{source}: no preprocessor_config.json (the model's image processor)")
    processor = AutoImageProcessor.from_pretrained(
        str(source), local_files_only=True, trust_remote_code=False, use_fast=False
    )
    model = AutoModel.from_pretrained(
        str(source),
        config=config,
        dtype=dtype,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=not options.allow_pickle,
    )
    if model_type in TOKEN_POOLED and getattr(model, "pooler", None) is not None:
        model.pooler = None  # its classifier reads the first token, not the pooler
    model.to(device).eval().requires_grad_(False)
    height, width, steps = _steps(processor)
    image = ImageInput(
        height=height,
        width=width,
        preprocessing=steps,
        mean=tuple(float(m) for m in getattr(processor, "image_mean", None) or ()),
        std=tuple(float(s) for s in getattr(processor, "image_std", None) or ()),
    )
    backbone = VisionBackbone(
        source=source,
        model=model,
        processor=processor,
        device=device,
        dtype=dtype,
        load_seconds=0.0,
        image=image,
        classifier=_checkpoint_classifier(source, config),
    )
    backbone.load_seconds = time.perf_counter() - started
    log.info(
        "backbone %s (%s, pooled %d) loaded on %s as %s in %.2fs; input %dx%d: %s",
        source,
        model_type,
        backbone.hidden_size,
        device,
        str(dtype).removeprefix("torch."),
        backbone.load_seconds,
        height,
        width,
        steps,
    )
    return backbone


class VisionKind:
    """Entry point "transformers-image"."""

    name = "transformers-image"
    contract_version = CONTRACT_VERSION

    def claims(self, source: str) -> bool:
        folder = Path(source)
        return (folder / "config.json").is_file() and _model_type(folder) in MODEL_TYPES

    def load(self, source: str, options: LoadOptions) -> VisionBackbone:
        return load(Path(source), options)

    def default_heads(self, source: str) -> tuple[HeadSpec, ...]:
        """encode (the pooled features), and classify when the checkpoint has a classifier."""
        heads = [HeadSpec("encode", "encode")]
        if any(_classifier_keys(Path(source))):
            heads.append(HeadSpec("classify", "classify"))
        return tuple(heads)


def _classifier_keys(folder: Path) -> list[str]:
    keys = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            keys += [k for k in f.keys() if k.startswith("classifier.")]
    return keys
