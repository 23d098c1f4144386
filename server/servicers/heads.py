"""Heads service: any generic head by name; JSON options in, its declared outputs out.
RunHeads: several heads of any tasks on the same items (run_heads.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from headserve.v1 import heads_pb2 as pb
from headserve.v1 import heads_pb2_grpc

from ._calls import Call, CoreHolder, ready, stream, text_items, unary, usage_timing
from ._generic import head_output, plain
from .run_heads import run_heads


class HeadsServicer(heads_pb2_grpc.HeadsServicer):
    def __init__(self, state: CoreHolder) -> None:
        self._state = state

    async def Run(
        self, request: pb.RunRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunResponse:
        return await unary(self._state, context, lambda call: self._run(request, call))

    async def RunStream(
        self, request_iterator: AsyncIterator[pb.RunRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunStreamResponse]:
        async for reply in stream(
            request_iterator, context, self._state, self._run, pb.RunStreamResponse
        ):
            yield reply

    async def RunHeads(
        self, request: pb.RunHeadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunHeadsResponse:
        return await unary(self._state, context, lambda call: self._run_heads(request, call))

    async def RunHeadsStream(
        self,
        request_iterator: AsyncIterator[pb.RunHeadsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.RunHeadsStreamResponse]:
        async for reply in stream(
            request_iterator, context, self._state, self._run_heads, pb.RunHeadsStreamResponse
        ):
            yield reply

    async def _run_heads(self, request: pb.RunHeadsRequest, call: Call) -> pb.RunHeadsResponse:
        return await run_heads(ready(self._state), request, call)

    async def _run(self, request: pb.RunRequest, call: Call) -> pb.RunResponse:
        core = ready(self._state)
        head, outcome = await core.run_head(
            request.head,
            text_items(request.items),
            plain(request.options),
            truncate=request.truncate,
            deadline=call.deadline,
            wait_for_room=call.wait_for_room,
        )
        return pb.RunResponse(
            head=head.name,
            task=head.task,
            results=[head_output(head, r[0]) for r in outcome.results],
            **usage_timing(outcome),
        )
