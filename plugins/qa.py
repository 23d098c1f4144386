"""The `qa` head: extractive question answering by a `...ForQuestionAnswering` checkpoint.

A context longer than the model's window is split into windows that overlap by
`doc_stride` tokens; every window is a row of the batch, and the best span over
all windows wins (see spans.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import AutoModelForQuestionAnswering

from .contract import (
    CONTRACT_VERSION,
    BackboneView,
    Features,
    Head,
    InvalidInput,
    LoadContext,
    Prepared,
    Row,
)
from .image_heads import refuse_images
from .spans import Window, best_spans
from .task_model import load_task_model
from .tasks import QAItem, QAOptions, QuestionAnswer
from .text import check_text

_MIN_CONTEXT_TOKENS = 8


def windows(backbone: BackboneView, item: QAItem, doc_stride: int) -> Prepared:
    """A question and its context as rows: one per window of the context.

    Each window's state is (context-token mask, character offsets), for span decoding.
    """
    check_text("question", item.question)
    check_text("context", item.context)
    tokenizer = backbone.tokenizer
    max_length = backbone.max_length
    question_tokens = len(tokenizer(item.question, add_special_tokens=False)["input_ids"])
    room = max_length - question_tokens - tokenizer.num_special_tokens_to_add(pair=True)
    if room < _MIN_CONTEXT_TOKENS:
        raise InvalidInput(
            "question",
            f"is {question_tokens} tokens, leaving {max(room, 0)} of the model's "
            f"{max_length} for the context; shorten the question",
        )
    stride = min(doc_stride, room // 2)
    encoded = tokenizer(
        item.question,
        item.context,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    rows = []
    spans = []
    for w in range(len(encoded["input_ids"])):
        sequence_ids = encoded.sequence_ids(w)
        mask = np.array([s == 1 for s in sequence_ids])
        types = encoded["token_type_ids"][w] if "token_type_ids" in encoded else None
        rows.append(Row(tuple(encoded["input_ids"][w]), tuple(types) if types else None))
        spans.append((mask, [tuple(o) for o in encoded["offset_mapping"][w]]))
    return Prepared(tuple(rows), state=(item.context, tuple(spans)))


def decode(
    prepared: Prepared, outputs: Sequence[tuple[np.ndarray, ...]], options: QAOptions
) -> QuestionAnswer:
    """The best answers of an item from its windows' (start, end) logits."""
    context, spans = prepared.state
    found = [
        Window(start, end, mask, offsets)
        for (start, end), (mask, offsets) in zip(outputs, spans, strict=True)
    ]
    answers = best_spans(
        context,
        found,
        top_k=options.top_k,
        max_answer_length=options.max_answer_length,
        allow_no_answer=options.allow_no_answer,
    )
    return QuestionAnswer(answers, len(found))


class QuestionAnsweringHead(Head[QAItem, QAOptions, QuestionAnswer]):
    task = "qa"
    cheap = True  # microseconds an item: inline for short items (core.py)

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        self._model = load_task_model(AutoModelForQuestionAnswering, context)
        self.trained = self._model.trained
        if not self.trained:
            self.detail = self._model.untrained("QA")

    def prepare(self, item: QAItem, options: QAOptions) -> Prepared:
        return windows(self._backbone, item, options.doc_stride)

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[tuple[np.ndarray, ...]]:
        with self._model.feeding(features.hidden) as model:
            out = model(input_ids=features.input_ids, attention_mask=features.attention_mask)
        start = out.start_logits.float().cpu().numpy()
        end = out.end_logits.float().cpu().numpy()
        return [
            (start[i, : len(r.input_ids)], end[i, : len(r.input_ids)]) for i, r in enumerate(rows)
        ]

    def finish(
        self, prepared: Prepared, outputs: Sequence[tuple[np.ndarray, ...]], options: QAOptions
    ) -> QuestionAnswer:
        return decode(prepared, outputs, options)


class QuestionAnsweringPlugin:
    task = "qa"
    contract_version = CONTRACT_VERSION
    options: dict[str, str] = {}

    def load(self, context: LoadContext) -> QuestionAnsweringHead:
        refuse_images(context, self.task)
        return QuestionAnsweringHead(context)
