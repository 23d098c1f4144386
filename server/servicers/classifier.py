"""Classifier service: protobuf in, plain values to the core, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from headserve.plugins.tasks import Classification, ClassifyOptions
from headserve.v1 import classifier_pb2 as pb
from headserve.v1 import classifier_pb2_grpc

from ._calls import Call, CoreHolder, options, ready, stream, text_items, unary, usage_timing


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


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, state: CoreHolder) -> None:
        self._state = state

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        return await unary(self._state, context, lambda call: self._classify(request, call))

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        async for reply in stream(
            request_iterator, context, self._state, self._classify, pb.ClassifyStreamResponse
        ):
            yield reply

    async def _classify(self, request: pb.ClassifyRequest, call: Call) -> pb.ClassifyResponse:
        core = ready(self._state)
        o = request.options
        opts = classify_options(o)
        heads: list[str | None] = list(o.heads) or [None]
        outcome = await core.run(
            "classify",
            heads,
            text_items(request.items),
            opts,
            deadline=call.deadline,
            wait_for_room=call.wait_for_room,
        )
        return pb.ClassifyResponse(
            results=[_classification(r) for r in outcome.results], **usage_timing(outcome)
        )
