"""Encoder service: protobuf in, plain values to the core, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from headserve.plugins.tasks import Embedding, EncodeOptions
from headserve.v1 import encoder_pb2 as pb
from headserve.v1 import encoder_pb2_grpc

from ..errors import InvalidArgument
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

_POOLING = {
    pb.POOLING_UNSPECIFIED: "default",
    pb.POOLING_CLS: "cls",
    pb.POOLING_MEAN: "mean",
    pb.POOLING_NONE: "none",
}


_TRUNCATION_SIDE = {
    pb.TRUNCATION_SIDE_UNSPECIFIED: "right",
    pb.TRUNCATION_SIDE_RIGHT: "right",
    pb.TRUNCATION_SIDE_LEFT: "left",
}


def embedding(e: Embedding) -> pb.Embedding:
    if e.sparse is not None:
        terms = e.sparse
        sparse = pb.SparseVector(
            token_ids=terms.token_ids, tokens=terms.tokens, weights=terms.weights
        )
        return pb.Embedding(sparse=sparse)
    if e.token_states is not None:
        return pb.Embedding(token_states=tensor(e.token_states), tokens=e.tokens)
    assert e.vector is not None
    return pb.Embedding(vector=e.vector.tolist())


def encode_options(o: pb.EncodeOptions) -> EncodeOptions:
    """A request's EncodeOptions as the encode heads take them."""
    if o.pooling not in _POOLING:
        raise InvalidArgument("options.pooling", f"unknown pooling {o.pooling}")
    if o.truncation_side not in _TRUNCATION_SIDE:
        raise InvalidArgument(
            "options.truncation_side", f"unknown truncation side {o.truncation_side}"
        )
    return options(
        EncodeOptions,
        pooling=_POOLING[o.pooling],
        normalize=o.normalize if o.HasField("normalize") else None,
        truncate=o.truncate,
        dimensions=o.dimensions,
        prompt_name=o.prompt_name or None,
        prompt=o.prompt if o.HasField("prompt") else None,
        truncation_side=_TRUNCATION_SIDE[o.truncation_side],
        sparse_top_k=o.sparse_top_k,
        sparse_min_weight=o.sparse_min_weight,
    )


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, state: CoreHolder) -> None:
        self._state = state

    async def Encode(
        self, request: pb.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeResponse:
        return await unary(self._state, context, lambda call: self._encode(request, call))

    async def EncodeStream(
        self, request_iterator: AsyncIterator[pb.EncodeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EncodeStreamResponse]:
        async for reply in stream(
            request_iterator, context, self._state, self._encode, pb.EncodeStreamResponse
        ):
            yield reply

    async def _encode(self, request: pb.EncodeRequest, call: Call) -> pb.EncodeResponse:
        core = ready(self._state)
        o = request.options
        opts = encode_options(o)
        outcome = await core.run(
            "encode",
            [o.head or None],
            text_items(request.items),
            opts,
            deadline=call.deadline,
            wait_for_room=call.wait_for_room,
        )
        return pb.EncodeResponse(
            results=[embedding(r[0]) for r in outcome.results], **usage_timing(outcome)
        )
