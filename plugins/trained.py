"""Heads trained by `headserve train-head` on the frozen shared backbone, served from their
artifact folder (artifact.py): `trained_classify` for Classify, `trained_qa` for
AnswerQuestion. Tokenization, windows and span decoding are the built-in heads'.

The artifact records the fingerprint of the backbone weights its features came from; a
different served backbone is refused unless the head option `force=true` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import artifact
from .artifact import ArtifactError, HeadMeta
from .classify import CLASSIFY_OPTIONS, ClassifyHead, ranking_score
from .contract import CONTRACT_VERSION, Features, InvalidInput, LoadContext, Prepared, Row
from .image_heads import image_row
from .qa import QuestionAnsweringHead
from .scores import activation
from .tasks import ClassifyOptions

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "pooled", "intermediate")


def pool(features: Features, how: str) -> torch.Tensor:
    """One float32 vector per row: the mean of its real tokens' states, its first token's, or
    ("pooled") an image backbone's pooled features."""
    if how == "pooled":
        if features.pooled is None:
            raise ValueError("pooling 'pooled' needs an image backbone's pooled features")
        return features.pooled.float()
    if how == "intermediate":  # a tail network pools itself
        if features.intermediate is None:
            raise ValueError("a tail head needs the backbone's intermediate features")
        return features.intermediate.float()
    hidden = features.hidden.float()
    if how == "cls":
        return hidden[:, 0]
    mask = features.attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _load(context: LoadContext, task: str) -> tuple[HeadMeta, torch.nn.Module, str]:
    """The artifact's network on the backbone's device, after the backbone checks."""
    view = context.backbone
    meta, module = artifact.load(context.source, view.tail)
    if meta.task != task:
        raise ArtifactError(f"{context.source} holds a {meta.task} head, not {task}")
    if meta.hidden_size != view.hidden_size:
        raise ArtifactError(
            f"{context.source} was trained on hidden size {meta.hidden_size}; "
            f"the served backbone has {view.hidden_size}"
        )
    image_head = meta.pooling in ("pooled", "intermediate")
    if image_head != (view.modality == "image"):
        raise ArtifactError(
            f"{context.source} was trained on {'image' if image_head else 'text'} "
            f"features; the served backbone ({view.kind}) reads {view.modality}"
        )
    forced = context.spec.options.get("force", "").lower() in {"1", "true", "yes"}
    served = artifact.backbone_fingerprint(view.source, view.module)
    note = ""
    if served != meta.fingerprint:
        trained_on = meta.backbone.get("source", "another backbone")
        message = (
            f"head {context.spec.name!r}: {context.source} was trained on the features of "
            f"{trained_on} (weights {meta.fingerprint[:19]}), not on the served backbone "
            f"{view.source} (weights {served[:19]}); its outputs would be meaningless"
        )
        if not forced:
            raise ArtifactError(
                message + ". Retrain it with `headserve train-head --model <the served "
                "backbone>`, or add ,force=true to the --head option to serve it anyway"
            )
        log.warning("%s; served anyway (force=true)", message)
        note = "FORCED onto a backbone it was not trained on; "
    return meta, module.to(view.device), note


def _metrics_note(meta: HeadMeta) -> str:
    shown = ", ".join(
        f"{k} {v:.3f}" for k, v in meta.metrics.items() if isinstance(v, float) and "loss" not in k
    )
    return f"trained by headserve train-head; held-out {shown}" if shown else ""


class TrainedClassifyHead(ClassifyHead):
    """Classify with a trained artifact: pooled backbone states -> its network -> softmax."""

    def __init__(self, context: LoadContext) -> None:  # not super(): there is no task model
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        self.meta, self.network, note = _load(context, "classify")
        if self.meta.pooling not in POOLINGS:
            raise ArtifactError(f"{context.source}: unknown pooling {self.meta.pooling!r}")
        self.labels = self.meta.labels
        self.multi_label = False
        self.activation = activation(context.spec.options, self.labels, self.multi_label)
        self.settings = {"activation": self.activation, "pooling": self.meta.pooling}
        self.rerank_score = ranking_score(context.spec.options, self.labels)
        self.trained = True
        self.detail = note + _metrics_note(self.meta)

    def prepare(self, item: Any, options: ClassifyOptions) -> Prepared:
        if self._backbone.modality == "image":
            if options.long_text != "none":
                raise InvalidInput("options.long_text", "reads texts: not for an image")
            return Prepared((image_row(item),))
        return super().prepare(item, options)

    def logits(self, features: Features) -> torch.Tensor:
        return self.network(pool(features, self.meta.pooling))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        return list(self.logits(features).float().cpu())  # the softmax: in finish


class TrainedQuestionAnsweringHead(QuestionAnsweringHead):
    """AnswerQuestion with a trained artifact: per-token states -> its network -> start, end."""

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        self.meta, self.network, note = _load(context, "qa")
        self.trained = True
        self.detail = note + _metrics_note(self.meta)

    def logits(self, features: Features) -> torch.Tensor:
        """[rows, tokens, 2]: start and end logits."""
        return self.network(features.hidden.float())

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[tuple[np.ndarray, ...]]:
        logits = self.logits(features).cpu().numpy()
        return [
            (logits[i, : len(r.input_ids), 0], logits[i, : len(r.input_ids), 1])
            for i, r in enumerate(rows)
        ]


FORCE = {"force": "true: serve it on a backbone other than the one it was trained on"}


class TrainedClassifyPlugin:
    task = "classify"
    contract_version = CONTRACT_VERSION
    options = {**FORCE, **CLASSIFY_OPTIONS}

    def load(self, context: LoadContext) -> TrainedClassifyHead:
        return TrainedClassifyHead(context)


class TrainedQuestionAnsweringPlugin:
    task = "qa"
    contract_version = CONTRACT_VERSION
    options = FORCE

    def load(self, context: LoadContext) -> TrainedQuestionAnsweringHead:
        return TrainedQuestionAnsweringHead(context)
