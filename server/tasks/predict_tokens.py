"""The predict_tokens task: TokenPredictor.PredictTokens and its stream, and masked-LM heads
in RunHeads."""

from __future__ import annotations

from headserve.plugins.tasks import PredictOptions, TokenPrediction
from headserve.v1 import common_pb2, heads_pb2
from headserve.v1 import token_predictor_pb2 as pb

from ..core.engine import Core
from .task import HeadForm, Task
from .wire import Call, options, tensor, text_items, usage_timing


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


async def answer(
    core: Core, request: pb.PredictTokensRequest, call: Call
) -> pb.PredictTokensResponse:
    o = request.options
    outcome = await core.run(
        "mlm",
        [o.head or None],
        text_items(request.items),
        predict_options(o),
        deadline=call.deadline,
        wait_for_room=call.wait_for_room,
    )
    return pb.PredictTokensResponse(
        results=[prediction(r[0]) for r in outcome.results], **usage_timing(outcome)
    )


def _head_result(value: TokenPrediction) -> heads_pb2.HeadResult:
    return heads_pb2.HeadResult(prediction=prediction(value))


TASK = Task(
    "predict_tokens",
    pb.DESCRIPTOR.services_by_name["TokenPredictor"],
    "PredictTokens",
    answer,
    serving="mlm",
    heads=HeadForm("mlm", "predict_tokens", predict_options, _head_result),
)
