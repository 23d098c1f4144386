"""Heads service: any generic head by name; JSON options in, its declared outputs out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2

from headserve.plugins.contract import Head, Output
from headserve.v1 import heads_pb2 as pb
from headserve.v1 import heads_pb2_grpc

from ..errors import HeadFailed
from ._calls import Call, CoreHolder, ready, stream, tensor, text_items, unary, usage_timing


def _plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values. Unlike json_format, NaN and infinity pass through,
    so the option checks can name the field instead of the conversion failing."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return _plain(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def _output(head: Head, output: Output) -> pb.HeadOutput:
    fields = struct_pb2.Struct()
    try:
        fields.update(output.fields)
        tensors = {name: tensor(array) for name, array in output.tensors.items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise HeadFailed(
            f"head {head.name!r} returned an output that is not JSON or a tensor: {exc!r}",
            head=head.name,
        ) from exc
    return pb.HeadOutput(fields=fields, tensors=tensors)


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

    async def _run(self, request: pb.RunRequest, call: Call) -> pb.RunResponse:
        core = ready(self._state)
        head, outcome = await core.run_head(
            request.head,
            text_items(request.items),
            _plain(request.options),
            truncate=request.truncate,
            deadline=call.deadline,
            wait_for_room=call.wait_for_room,
        )
        return pb.RunResponse(
            head=head.name,
            task=head.task,
            results=[_output(head, r[0]) for r in outcome.results],
            **usage_timing(outcome),
        )
