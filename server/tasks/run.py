"""The run task: Heads.Run and its stream, any generic head by name: JSON options in, its
declared outputs out (generic_wire.py)."""

from __future__ import annotations

from headserve.v1 import heads_pb2 as pb

from ..core.engine import Core
from .generic_wire import head_output, plain
from .task import GENERIC, Task
from .wire import Call, text_items, usage_timing


async def answer(core: Core, request: pb.RunRequest, call: Call) -> pb.RunResponse:
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


TASK = Task("run", pb.DESCRIPTOR.services_by_name["Heads"], "Run", answer, serving=GENERIC)
