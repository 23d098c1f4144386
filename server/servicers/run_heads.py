"""Heads.RunHeads: several heads of any tasks on the same items, one backbone pass per item.

Each HeadCall becomes a HeadPlan (the head and its task's options, or why it cannot run).
Each cell of the answer is the head's result for the item, as the head's own service
would return it, or a Status for that head and item alone: one head refusing an item,
its options or its output leaves the others' results standing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from headserve.plugins.contract import Head
from headserve.v1 import heads_pb2 as pb

from ..core import Core, HeadPlan
from ..errors import HeadFailed, HeadserveError, InvalidArgument
from ..generic import parse_params
from ..heads import HeadRegistry
from ..status import to_status
from ._calls import Call, text_items, usage_timing
from ._generic import head_output, plain
from .classifier import classify_options, head_classification
from .encoder import embedding, encode_options
from .question_answerer import answers, qa_options
from .token_predictor import predict_options, prediction

# The HeadCall.options field each built-in task takes; any other task's: "params".
_OPTIONS_FIELD = {
    "encode": "encode",
    "classify": "classify",
    "mlm": "predict_tokens",
    "qa": "answer_question",
}


# How each built-in task's options message becomes the options its heads take.
_PARSE: dict[str, Callable[[Any], Any]] = {
    "encode": encode_options,
    "classify": classify_options,
    "predict_tokens": predict_options,
    "answer_question": qa_options,
}


def _options_field(head: Head) -> str:
    return _OPTIONS_FIELD.get(head.task, "params")


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
    options = _PARSE[wanted](message)
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
    task = head.task
    if task == "encode":
        return pb.HeadResult(embedding=embedding(value))
    if task == "classify":
        return pb.HeadResult(classification=head_classification(value))
    if task == "mlm":
        return pb.HeadResult(prediction=prediction(value))
    if task == "qa":
        return pb.HeadResult(answer=answers(value))
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


async def run_heads(core: Core, request: pb.RunHeadsRequest, call: Call) -> pb.RunHeadsResponse:
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
