"""The run_heads task: Heads.RunHeads and its stream, several heads of any tasks on the same
items, one backbone pass per item.

Each HeadCall becomes a HeadPlan (the head and its task's options, or why it cannot run).
Each cell of the answer is the head's result for the item, as the head's own service
would return it, or a Status for that head and item alone: one head refusing an item,
its options or its output leaves the others' results standing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from headserve.plugins.contract import Head
from headserve.v1 import heads_pb2 as pb

from ..calls.status import to_status
from ..core.engine import Core, HeadPlan
from ..core.generic import parse_params
from ..core.heads import HeadRegistry
from ..errors import HeadFailed, HeadserveError, InvalidArgument
from .generic_wire import head_output, plain
from .task import GENERIC, HeadForm, Task
from .wire import Call, text_items, usage_timing


@functools.cache
def _forms() -> dict[str, HeadForm]:
    """How each task whose description has a head form runs its heads here, by the heads'
    task; a head of any other task takes `params` and answers a HeadOutput."""
    from . import TASKS  # the table holds this task too

    return {task.heads.task: task.heads for task in TASKS if task.heads is not None}


def _options_field(head: Head) -> str:
    form = _forms().get(head.task)
    return form.options_field if form is not None else "params"


def _renamed(exc: HeadserveError, index: int, head: Head) -> HeadserveError:
    """An error naming the call's option ("options.X") names this head's ("heads[j].<its
    options field>.X"), so that a caller of many heads knows whose option it was."""
    if isinstance(exc, InvalidArgument) and exc.field.startswith("options."):
        field = f"heads[{index}].{_options_field(head)}.{exc.field.removeprefix('options.')}"
        return InvalidArgument(field, exc.description, item=exc.item)
    return exc


def _task_options(head: Head, index: int, call: pb.HeadCall, truncate: bool) -> Any:
    given = call.WhichOneof("options")
    wanted = _options_field(head)
    if given is not None and given != wanted:
        raise InvalidArgument(
            f"heads[{index}].{given}",
            f"head {head.name!r} is a {head.task} head: give its options as {wanted}",
        )
    if wanted == "params":
        return parse_params(head, plain(call.params), truncate=truncate)
    message = getattr(call, wanted)
    named = getattr(message, "head", "") or ""
    if named and named != call.head or list(getattr(message, "heads", ())):
        raise InvalidArgument(
            f"heads[{index}].{wanted}.head{'s' if wanted == 'classify' else ''}",
            "the head is named by heads[j].head: leave this empty (one HeadCall per head)",
        )
    options = _forms()[head.task].options(message)
    if truncate and hasattr(options, "truncate"):
        options = dataclasses.replace(options, truncate=True)
    return options


def plan(registry: HeadRegistry, index: int, call: pb.HeadCall, truncate: bool) -> HeadPlan:
    """What heads[index] of a call runs, or the error every item gets for it."""
    try:
        head = registry.resolve_any(call.head, field=f"heads[{index}].head")
    except HeadserveError as exc:
        return HeadPlan(None, error=exc)
    try:
        return HeadPlan(head, _task_options(head, index, call, truncate))
    except HeadserveError as exc:
        return HeadPlan(None, error=_renamed(exc, index, head))


def _result(head: Head, value: Any) -> pb.HeadResult:
    form = _forms().get(head.task)
    if form is not None:
        result = form.result(value)
        assert isinstance(result, pb.HeadResult)
        return result
    return pb.HeadResult(output=head_output(head, value))


def _cell(plan: HeadPlan, index: int, value: Any) -> pb.HeadResult:
    head = plan.head
    if isinstance(value, BaseException):
        error = (
            _renamed(value, index, head)
            if head is not None and isinstance(value, HeadserveError)
            else value
        )
        return pb.HeadResult(error=to_status(error))
    assert head is not None  # a plan without a head has an error in every cell
    try:
        return _result(head, value)
    except HeadFailed as exc:
        return pb.HeadResult(error=to_status(exc))


async def answer(core: Core, request: pb.RunHeadsRequest, call: Call) -> pb.RunHeadsResponse:
    plans = [
        plan(core.registry, index, head_call, request.truncate)
        for index, head_call in enumerate(request.heads)
    ]
    outcome = await core.run_heads(
        plans,
        text_items(request.items),
        deadline=call.deadline,
        wait_for_room=call.wait_for_room,
    )
    ran = []
    for head_call in request.heads:
        served = core.registry.heads.get(head_call.head)
        ran.append(pb.HeadRan(head=head_call.head, task=served.head.task if served else ""))
    results = [
        pb.ItemHeadResults(
            heads=[
                _cell(p, index, value)
                for index, (p, value) in enumerate(zip(plans, per_item, strict=True))
            ]
        )
        for per_item in outcome.results
    ]
    return pb.RunHeadsResponse(results=results, heads=ran, **usage_timing(outcome))


TASK = Task(
    "run_heads", pb.DESCRIPTOR.services_by_name["Heads"], "RunHeads", answer, serving=GENERIC
)
