"""The encode and classify heads on an image backbone.

The built-in plugins `encode` and `classify` load these when the backbone's modality is
"image", so `--head NAME=encode` and `--head NAME=classify` mean the same on either kind.

encode: the backbone's pooled features (what its classifier reads), normalized if asked;
pooling "mean" averages the last feature map's positions, "cls" takes its first position (a
ViT's class token), "none" returns every position.
classify: a linear classifier on the pooled features, softmax (or a sigmoid per label for a
multi-label one): the checkpoint's own classifier (`BackboneView.classifier`), e.g. the
ImageNet head of EfficientNet-Lite or of a `...ForImageClassification` folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .contract import Features, Head, InvalidInput, LinearClassifier, LoadContext, Prepared, Row
from .scores import activation, classified
from .tasks import Classification, ClassifyOptions, Embedding, EncodeOptions, ImageItem


def image_row(item: object, extra: object = None) -> Row:
    """The row of an image item (the server decoded and preprocessed it already)."""
    if not isinstance(item, ImageItem) or item.pixels is None:
        raise InvalidInput("image", "this head reads images: send the item's image")
    return Row((), extra=extra, pixels=item.pixels)


def _truthy(value: str) -> bool:
    return value.lower() in {"1", "true", "yes"}


class ImageEncodeHead(Head[ImageItem, EncodeOptions, Embedding]):
    task = "encode"
    cheap = True  # microseconds an item: inline for short items (core.py)

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self.default_normalize = _truthy(context.spec.options.get("normalize", "false"))
        self.detail = f"pooled image features, normalize {self.default_normalize}"

    def prepare(self, item: ImageItem, options: EncodeOptions) -> Prepared:
        if options.chunk_mode != "none":
            raise InvalidInput("options.chunk_mode", "chunks texts: not for an image")
        normalize = self.default_normalize if options.normalize is None else options.normalize
        return Prepared((image_row(item, (options.pooling, normalize)),))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        if features.pooled is None:
            raise ValueError("the backbone gave no pooled features")
        hidden, pooled = features.hidden.float(), features.pooled.float()
        outputs = []
        for i, row in enumerate(rows):
            pooling, normalize = row.extra
            if pooling == "none":
                outputs.append(hidden[i].cpu())
                continue
            vector = {"cls": hidden[i, 0], "mean": hidden[i].mean(0)}.get(pooling, pooled[i])
            if normalize:
                vector = torch.nn.functional.normalize(vector, dim=-1)
            outputs.append(vector.cpu())
        return outputs

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: EncodeOptions
    ) -> Embedding:
        (output,) = outputs
        if prepared.rows[0].extra[0] == "none":
            return Embedding(None, output.numpy())
        return Embedding(output.numpy())


class ImageClassifyHead(Head[ImageItem, ClassifyOptions, Classification]):
    task = "classify"
    cheap = True  # microseconds an item: inline for short items (core.py)

    def __init__(self, context: LoadContext, classifier: LinearClassifier) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        device = context.backbone.device
        self._weight = classifier.weight.float().to(device)
        self._bias = classifier.bias.float().to(device)
        self.labels = classifier.labels
        multi = context.spec.options.get("multi_label")
        self.multi_label = _truthy(multi) if multi is not None else classifier.multi_label
        self.activation = activation(context.spec.options, self.labels, self.multi_label)
        self.settings = {"activation": self.activation}
        self.detail = f"{len(self.labels)} labels on the pooled image features"

    def prepare(self, item: ImageItem, options: ClassifyOptions) -> Prepared:
        if options.long_text != "none":
            raise InvalidInput("options.long_text", "reads texts: not for an image")
        return Prepared((image_row(item),))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        if features.pooled is None:
            raise ValueError("the backbone gave no pooled features")
        logits = torch.nn.functional.linear(features.pooled.float(), self._weight, self._bias)
        return list(logits.cpu())

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: ClassifyOptions
    ) -> Classification:
        (logits,) = outputs
        return classified(
            self.name, self.multi_label, self.labels, logits, self.activation, options.top_k
        )


def load_image_classifier(context: LoadContext) -> ImageClassifyHead:
    """The checkpoint's own classifier; a head with another source is a trained artifact."""
    classifier = context.backbone.classifier
    if context.spec.source is not None or classifier is None:
        raise ValueError(
            f"{context.source}: the image backbone has no classifier of its own; serve a "
            "head trained with `headserve train-head` (--head NAME=PATH)"
        )
    return ImageClassifyHead(context, classifier)


def refuse_images(context: LoadContext, task: str) -> None:
    """A text-only head on an image backbone fails to load, saying so."""
    if context.backbone.modality != "text":
        raise ValueError(
            f"a {task} head reads text; this server's backbone ({context.backbone.kind}) "
            f"reads {context.backbone.modality}s"
        )
