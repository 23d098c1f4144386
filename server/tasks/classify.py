"""The classify task: Classifier.Classify and its stream, and classify heads in RunHeads."""

from __future__ import annotations

from collections.abc import Sequence

from headserve.plugins.tasks import Classification, ClassifyOptions
from headserve.v1 import classifier_pb2 as pb
from headserve.v1 import heads_pb2

from ..core.engine import Core
from .task import HeadForm, Task
from .wire import Call, options, text_items, usage_timing


def head_classification(c: Classification) -> pb.HeadClassification:
    logits: Sequence[float | None] = c.label_logits or [None] * len(c.labels)
    return pb.HeadClassification(
        head=c.head,
        multi_label=c.multi_label,
        labels=[
            pb.LabelScore(label=label, probability=p, logit=logit)
            for (label, p), logit in zip(c.labels, logits, strict=True)
        ],
        activation=c.activation,
    )


def _classification(per_head: Sequence[Classification]) -> pb.Classification:
    return pb.Classification(heads=[head_classification(c) for c in per_head])


def classify_options(o: pb.ClassifyOptions) -> ClassifyOptions:
    return options(ClassifyOptions, top_k=o.top_k, truncate=o.truncate)


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
