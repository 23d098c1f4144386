"""The classify task: Classifier.Classify and its stream, and classify heads in RunHeads."""

from __future__ import annotations

from collections.abc import Sequence

from headserve.plugins.tasks import Classification, ClassifyOptions
from headserve.v1 import classifier_pb2 as pb
from headserve.v1 import heads_pb2

from ..core.engine import Core
from .task import HeadForm, Task
from .wire import CHUNK_BY, Call, chosen, options, text_items, usage_timing

_LONG_TEXT = {
    pb.LONG_TEXT_UNSPECIFIED: "none",
    pb.LONG_TEXT_MEAN: "mean",
    pb.LONG_TEXT_MAX: "max",
    pb.LONG_TEXT_FIRST: "first",
}


def _labels(c: Classification) -> list[pb.LabelScore]:
    logits: Sequence[float | None] = c.label_logits or [None] * len(c.labels)
    return [
        pb.LabelScore(label=label, probability=p, logit=logit)
        for (label, p), logit in zip(c.labels, logits, strict=True)
    ]


def head_classification(c: Classification) -> pb.HeadClassification:
    return pb.HeadClassification(
        head=c.head,
        multi_label=c.multi_label,
        labels=_labels(c),
        activation=c.activation,
        chunks=[
            pb.ChunkClassification(
                start=chunk.start,
                end=chunk.end,
                tokens=chunk.tokens,
                labels=_labels(chunk.classification),
            )
            for chunk in c.chunks
        ],
    )


def _classification(per_head: Sequence[Classification]) -> pb.Classification:
    return pb.Classification(heads=[head_classification(c) for c in per_head])


def classify_options(o: pb.ClassifyOptions) -> ClassifyOptions:
    return options(
        ClassifyOptions,
        top_k=o.top_k,
        truncate=o.truncate,
        long_text=chosen(o, "long_text", _LONG_TEXT),
        chunk_tokens=o.chunk_tokens,
        chunk_overlap=o.chunk_overlap,
        chunk_by=chosen(o, "chunk_by", CHUNK_BY),
        return_chunks=o.return_chunks,
    )


async def answer(core: Core, request: pb.ClassifyRequest, call: Call) -> pb.ClassifyResponse:
    o = request.options
    heads: list[str | None] = list(o.heads) or [None]
    outcome = await core.run(
        "classify",
        heads,
        text_items(request.items),
        classify_options(o),
        deadline=call.deadline,
        wait_for_room=call.wait_for_room,
    )
    return pb.ClassifyResponse(
        results=[_classification(r) for r in outcome.results], **usage_timing(outcome)
    )


def _head_result(value: Classification) -> heads_pb2.HeadResult:
    return heads_pb2.HeadResult(classification=head_classification(value))


TASK = Task(
    "classify",
    pb.DESCRIPTOR.services_by_name["Classifier"],
    "Classify",
    answer,
    serving="classify",
    heads=HeadForm("classify", "classify", classify_options, _head_result),
)
