"""The `classify` head: a `...ForSequenceClassification` checkpoint's classifier.

A text longer than the window, with `long_text`, is classified in chunks (documents.py), each
a row of its own: the text's logits are the chunks' mean, their maximum per label, or the
first chunk's alone, and each chunk's labels come back when asked.

Single-label heads give a softmax over the labels; multi-label heads (the
checkpoint's `problem_type` is "multi_label_classification", or the head option
`multi_label=true`) an independent sigmoid per label; a one-label head the sigmoid of its
logit (scores.py; the head option `activation` chooses another). Each label's logit comes
with its score.

As a cross-encoder (Ranker.Rerank) the head scores a (query, document) pair by
`rerank_score`: `sigmoid` (of a one-logit head's logit), `logit` (that logit itself),
or `label:NAME` (that label's probability). Default: sigmoid for one logit, the second
label's probability for two labels (a "not relevant" / "relevant" head).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from .contract import CONTRACT_VERSION, Features, Head, LoadContext, Prepared, Row
from .documents import Wrapper, chunk_size, read_chunks
from .image_heads import ImageClassifyHead, load_image_classifier
from .scores import activation, classified
from .task_model import load_task_model
from .tasks import ChunkLabels, Classification, ClassifyOptions, TextItem
from .text import encode_text


class ClassifyHead(Head[TextItem, ClassifyOptions, Classification]):
    task = "classify"
    cheap = True  # microseconds an item: inline for short items (core.py)

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
        self.activation = activation(options, self.labels, self.multi_label)
        self.settings = {"activation": self.activation}
        self.rerank_score = ranking_score(options, self.labels)
        self.trained = self._model.trained
        if not self.trained:
            self.detail = self._model.untrained("classifier")

    def prepare(self, item: TextItem, options: ClassifyOptions) -> Prepared:
        if options.long_text != "none":
            return self._chunks(item, options)
        row, _ = encode_text(self._backbone, item, truncate=options.truncate)
        return Prepared((row,))

    def _chunks(self, item: TextItem, options: ClassifyOptions) -> Prepared:
        """A long text as the rows of its chunks (the first alone for "first"); the state is
        their spans."""
        tokenizer = self._backbone.tokenizer
        wrapper = Wrapper.of(tokenizer)
        room = self._backbone.max_length - wrapper.added
        why = "the window less the special tokens"
        size = chunk_size(options.chunk_tokens, options.chunk_overlap, room, room, why)
        document, spans = read_chunks(
            tokenizer, item, size, options.chunk_overlap, options.chunk_by
        )
        if options.long_text == "first":
            spans = spans[:1]
        rows = tuple(wrapper.row(document.ids[s.first : s.end]) for s in spans)
        return Prepared(rows, spans, document_tokens=len(document))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        with self._model.feeding(features.hidden) as model:
            logits = model(
                input_ids=features.input_ids, attention_mask=features.attention_mask
            ).logits.float()
        return list(logits.cpu())

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: ClassifyOptions
    ) -> Classification:
        if options.long_text == "none":
            (logits,) = outputs
            return self._classified(logits, options)
        chunks = torch.stack(list(outputs))
        if options.long_text == "mean":
            whole = chunks.mean(0)
        elif options.long_text == "max":
            whole = chunks.max(0).values
        else:
            whole = chunks[0]
        result = self._classified(whole, options)
        if not options.return_chunks:
            return result
        labelled = tuple(
            ChunkLabels(s.start, s.stop, s.tokens, self._classified(logits, options))
            for s, logits in zip(prepared.state, chunks, strict=True)
        )
        return dataclasses.replace(result, chunks=labelled)

    def _classified(self, logits: torch.Tensor, options: ClassifyOptions) -> Classification:
        return classified(
            self.name, self.multi_label, self.labels, logits, self.activation, options.top_k
        )

    def relevance(self, classification: Classification) -> float:
        """A (query, document) pair's score as a cross-encoder (see the module's docstring)."""
        assert self.rerank_score is not None  # the ranker asks only a head that can rank
        return relevance(self.rerank_score, classification)


def relevance(score: str, classification: Classification) -> float:
    """A pair's score from its classification, by a head's `rerank_score`."""
    if score == "sigmoid":
        return float(torch.tensor(classification.logits[0]).sigmoid())
    if score == "logit":
        return classification.logits[0]
    return dict(classification.labels)[score.removeprefix("label:")]


def ranking_score(options: Mapping[str, str], labels: Sequence[str]) -> str | None:
    """How a classify head scores a pair as a cross-encoder: its `rerank_score` option, or
    the default for its labels (None: it cannot tell). A bad option is a ValueError."""
    score = options.get("rerank_score")
    if score is None:
        if len(labels) == 1:
            return "sigmoid"
        return f"label:{labels[1]}" if len(labels) == 2 else None
    if score in {"sigmoid", "logit"} and len(labels) == 1:
        return score
    if score.startswith("label:") and score.removeprefix("label:") in labels:
        return score
    raise ValueError(
        f"rerank_score={score!r}: choose sigmoid or logit (a one-logit head) or label:NAME "
        f"with NAME one of {', '.join(labels)}"
    )


CLASSIFY_OPTIONS = {
    "activation": "softmax, sigmoid or none (default: softmax; sigmoid per label when multi-label)",
    "rerank_score": "how it scores a pair for Rerank: sigmoid, logit or label:NAME",
}


class ClassifyPlugin:
    task = "classify"
    contract_version = CONTRACT_VERSION
    options = {
        **CLASSIFY_OPTIONS,
        "multi_label": "true: a sigmoid per label (default: the checkpoint's problem_type)",
        "num_labels": "the classifier's number of labels, when its config does not say",
    }

    def load(self, context: LoadContext) -> ClassifyHead | ImageClassifyHead:
        if context.backbone.modality == "image":
            return load_image_classifier(context)
        return ClassifyHead(context)
