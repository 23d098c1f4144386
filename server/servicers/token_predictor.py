"""TokenPredictor service: protobuf in, plain values to the core, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from headserve.plugins.tasks import PredictOptions, TokenPrediction
from headserve.v1 import common_pb2, token_predictor_pb2_grpc
from headserve.v1 import token_predictor_pb2 as pb

from ._calls import (
    Call,
    CoreHolder,
    options,
    ready,
    stream,
    tensor,
    text_items,
    unary,
    usage_timing,
)


def prediction(p: TokenPrediction) -> pb.TokenPrediction:
    masks = [
        pb.MaskPrediction(
            position=m.position,
            span=common_pb2.Span(start=m.span[0], end=m.span[1]),
            candidates=[
                pb.TokenCandidate(token_id=c.token_id, token=c.token, probability=c.probability)
                for c in m.candidates
            ],
        )
        for m in p.masks
    ]
    if p.logits is None:
        return pb.TokenPrediction(masks=masks)
    return pb.TokenPrediction(masks=masks, logits=tensor(p.logits))


def predict_options(o: pb.PredictTokensOptions) -> PredictOptions:
    return options(
        PredictOptions, top_k=o.top_k or None, return_logits=o.return_logits, truncate=o.truncate
    )


class TokenPredictorServicer(token_predictor_pb2_grpc.TokenPredictorServicer):
    def __init__(self, state: CoreHolder) -> None:
        self._state = state

    async def PredictTokens(
        self, request: pb.PredictTokensRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictTokensResponse:
        return await unary(self._state, context, lambda call: self._predict(request, call))

    async def PredictTokensStream(
        self,
        request_iterator: AsyncIterator[pb.PredictTokensRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.PredictTokensStreamResponse]:
        async for reply in stream(
            request_iterator, context, self._state, self._predict, pb.PredictTokensStreamResponse
        ):
            yield reply

    async def _predict(
        self, request: pb.PredictTokensRequest, call: Call
    ) -> pb.PredictTokensResponse:
        core = ready(self._state)
        o = request.options
        opts = predict_options(o)
        outcome = await core.run(
            "mlm",
            [o.head or None],
            text_items(request.items),
            opts,
            deadline=call.deadline,
            wait_for_room=call.wait_for_room,
        )
        return pb.PredictTokensResponse(
            results=[prediction(r[0]) for r in outcome.results], **usage_timing(outcome)
        )
