"""Ranker service: a query and its documents in, the documents in order out (ranking.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from headserve.v1 import ranker_pb2 as pb
from headserve.v1 import ranker_pb2_grpc

from ..errors import InvalidArgument
from ..ranking import rerank
from ._calls import Call, CoreHolder, ready, stream, unary, usage_timing


class RankerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, state: CoreHolder) -> None:
        self._state = state

    async def Rerank(
        self, request: pb.RerankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RerankResponse:
        return await unary(self._state, context, lambda call: self._rerank(request, call))

    async def RerankStream(
        self, request_iterator: AsyncIterator[pb.RerankRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RerankStreamResponse]:
        async for reply in stream(
            request_iterator, context, self._state, self._rerank, pb.RerankStreamResponse
        ):
            yield reply

    async def _rerank(self, request: pb.RerankRequest, call: Call) -> pb.RerankResponse:
        core = ready(self._state)
        o = request.options
        if o.top_n < 0:
            raise InvalidArgument("options.top_n", f"must be at least 0, got {o.top_n}")
        ranking = await rerank(
            core,
            request.query,
            list(request.documents),
            head=o.head or None,
            truncate=o.truncate,
            deadline=call.deadline,
            wait_for_room=call.wait_for_room,
        )
        kept = ranking.order[: o.top_n] if o.top_n else ranking.order
        results = [
            pb.RankedDocument(
                index=index,
                score=score,
                document=request.documents[index] if o.return_documents else "",
            )
            for index, score in kept
        ]
        return pb.RerankResponse(
            results=results, head=ranking.head, **usage_timing(ranking.outcome)
        )
