"""The `classify` head: a `...ForSequenceClassification` checkpoint's classifier.

Single-label heads give a softmax over the labels; multi-label heads (the
checkpoint's `problem_type` is "multi_label_classification", or the head option
`multi_label=true`) an independent sigmoid per label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification

from .contract import CONTRACT_VERSION, Features, Head, LoadContext, Prepared, Row
from .image_heads import ImageClassifyHead, load_image_classifier
from .task_model import load_task_model
from .tasks import Classification, ClassifyOptions, TextItem
from .text import encode_text


class ClassifyHead(Head[TextItem, ClassifyOptions, Classification]):
    task = "classify"

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        options = context.spec.options
        overrides = {"num_labels": int(options["num_labels"])} if "num_labels" in options else {}
        self._model = load_task_model(AutoModelForSequenceClassification, context, **overrides)
        config = self._model.config
        id2label = {int(i): label for i, label in (config.id2label or {}).items()}
        self.labels = tuple(id2label[i] for i in range(config.num_labels or len(id2label)))
        multi = options.get("multi_label")
        self.multi_label = (
            multi.lower() in {"1", "true", "yes"}
            if multi is not None
            else config.problem_type == "multi_label_classification"
        )
        self.trained = not self._model.missing
        if not self.trained:
            self.detail = "classifier weights missing from the checkpoint: " + ", ".join(
                self._model.missing
            )

    def prepare(self, item: TextItem, options: ClassifyOptions) -> Prepared:
        row, _ = encode_text(self._backbone, item, truncate=options.truncate)
        return Prepared((row,))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        with self._model.feeding(features.hidden) as model:
            logits = model(
                input_ids=features.input_ids, attention_mask=features.attention_mask
            ).logits.float()
        probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
        return list(probs.cpu())

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: ClassifyOptions
    ) -> Classification:
        (probs,) = outputs
        return Classification.ranked(
            self.name, self.multi_label, self.labels, probs.tolist(), options.top_k
        )


class ClassifyPlugin:
    task = "classify"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> ClassifyHead | ImageClassifyHead:
        if context.backbone.modality == "image":
            return load_image_classifier(context)
        return ClassifyHead(context)
