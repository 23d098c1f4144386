"""The `encode` head: embeddings straight from the shared backbone (no weights of its own).

Pooling: CLS (first token), MEAN (over real tokens) or NONE (every token's
state). The default follows a sentence-transformers checkpoint's own
`1_Pooling/config.json` and `2_Normalize` module when the folder has them, else CLS
without normalisation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .contract import CONTRACT_VERSION, Features, Head, LoadContext, Prepared, Row
from .image_heads import ImageEncodeHead
from .tasks import Embedding, EncodeOptions, TextItem
from .text import encode_text


def sentence_transformers_defaults(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) declared by a sentence-transformers folder, else ("cls", False)."""
    pooling, normalize = "cls", False
    modules = folder / "modules.json"
    if not modules.is_file():
        return pooling, normalize
    for module in json.loads(modules.read_text()):
        kind = module.get("type", "")
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling"):
            config = json.loads((folder / module["path"] / "config.json").read_text())
            if config.get("pooling_mode_mean_tokens"):
                pooling = "mean"
    return pooling, normalize


class EncodeHead(Head[TextItem, EncodeOptions, Embedding]):
    task = "encode"

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        pooling, normalize = sentence_transformers_defaults(context.source)
        self.default_pooling = context.spec.options.get("pooling", pooling)
        self.default_normalize = context.spec.options.get("normalize", str(normalize)).lower() in {
            "1",
            "true",
            "yes",
        }
        if self.default_pooling not in {"cls", "mean", "none"}:
            raise ValueError(f"pooling={self.default_pooling!r}: choose cls, mean or none")
        self.detail = f"default pooling {self.default_pooling}, normalize {self.default_normalize}"

    def prepare(self, item: TextItem, options: EncodeOptions) -> Prepared:
        pooling = self.default_pooling if options.pooling == "default" else options.pooling
        normalize = self.default_normalize if options.normalize is None else options.normalize
        row, encoding = encode_text(
            self._backbone, item, truncate=options.truncate, extra=(pooling, normalize)
        )
        return Prepared((row,), state=tuple(encoding.tokens()) if pooling == "none" else ())

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        hidden = features.hidden.float()
        mask = features.attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        outputs = []
        for i, row in enumerate(rows):
            pooling, normalize = row.extra
            if pooling == "none":
                outputs.append(hidden[i, : len(row.input_ids)].cpu())
                continue
            vector = hidden[i, 0] if pooling == "cls" else mean[i]
            if normalize:
                vector = torch.nn.functional.normalize(vector, dim=-1)
            outputs.append(vector.cpu())
        return outputs

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: EncodeOptions
    ) -> Embedding:
        (output,) = outputs
        if prepared.rows[0].extra[0] == "none":
            return Embedding(None, output.numpy(), prepared.state)
        return Embedding(output.numpy())


class EncodePlugin:
    task = "encode"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> EncodeHead | ImageEncodeHead:
        if context.backbone.modality == "image":
            return ImageEncodeHead(context)
        return EncodeHead(context)
