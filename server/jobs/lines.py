"""A batch job's lines: OpenAI's Batch input format, and what answers each.

A line is a JSON object: `custom_id` (the caller's, unique in the file), `method` ("POST"),
`url` and `body`. The url is a route of the OpenAI-style HTTP endpoint (`/v1/embeddings`,
`/v1/rerank`), whose JSON body it takes, or a headserve RPC's full method name
(`/headserve.v1.Heads/RunHeads`, `/headserve.v1.Classifier/Classify`...), whose request it
takes in proto3's JSON mapping. A line is answered exactly as the unary call would be: the same
task's answer, on the same core, with the same limits; its answer is the route's JSON, or the
response message in proto3's JSON mapping.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from ..errors import InvalidArgument
from ..tasks import Task
from ..tasks.wire import Call

if TYPE_CHECKING:
    from ..core.engine import Core

# a line's body -> its answer's JSON; a job's calls wait for queue room rather than be refused
Answer = Callable[["Core", Any], Awaitable[Any]]
JOB_CALL = Call(deadline=None, wait_for_room=True)


def endpoints(tasks: Sequence[Task]) -> dict[str, Answer]:
    """Every url a line may name, and what answers it: the tasks' POST routes and unary RPCs
    (the admin RPCs excluded)."""
    found: dict[str, Answer] = {}
    for task in tasks:
        if task.admin:
            continue
        for route in task.http:
            if route.method == "POST":
                found[route.path] = _route(route.answer)
        found[f"/{task.full_name}"] = _rpc(task)
    return found


def _route(answer: Callable[[Core, Any, Call], Awaitable[Any]]) -> Answer:
    async def run(core: Core, body: Any) -> Any:
        if not isinstance(body, dict):
            raise InvalidArgument("body", "must be a JSON object")
        return await answer(core, body, JOB_CALL)

    return run


def _rpc(task: Task) -> Answer:
    async def run(core: Core, body: Any) -> Any:
        request = task.request()
        try:
            json_format.ParseDict(body, request)
        except json_format.ParseError as exc:
            raise InvalidArgument("body", f"is not a {request.DESCRIPTOR.name}: {exc}") from exc
        response = await task.answer(core, request, JOB_CALL)
        core.request_limits.check_response(response.ByteSize())
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    return run


@dataclass(frozen=True)
class Line:
    """One line of a job's input, as read: its request, or why it is not one."""

    number: int  # from 1
    custom_id: str | None
    url: str | None
    body: Any
    problem: str | None = None  # set: the line fails alone, with this reason


def read_line(number: int, raw: bytes) -> Line:
    """Line `number` of an input file (its bytes, without the newline)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return Line(number, None, None, None, f"line {number} is not JSON: {exc}")
    if not isinstance(value, dict):
        return Line(number, None, None, None, f"line {number} is not a JSON object")
    custom_id, url = value.get("custom_id"), value.get("url")
    if not isinstance(custom_id, str) or not custom_id:
        return Line(number, None, None, None, f"line {number} has no custom_id (a string)")
    if not isinstance(url, str):
        return Line(number, custom_id, None, None, "has no url (a string)")
    method = value.get("method", "POST")
    if method != "POST":
        return Line(number, custom_id, url, None, f"method {method!r}: only POST")
    if "body" not in value:
        return Line(number, custom_id, url, None, "has no body")
    return Line(number, custom_id, url, value["body"])


def check_upload(data: bytes, known: Sequence[str]) -> int:
    """The number of lines of an uploaded job input, or InvalidArgument: not UTF-8 text, no
    line a JSON object (not JSONL), or a line naming a url no endpoint answers. Lines that are
    broken otherwise are the job's to fail alone, with their reason in its error file."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("file", f"is not UTF-8 text (byte {exc.start})") from exc
    # lines end at "\n" alone, as the runner reads them (a JSON string may hold U+2028)
    lines = data.split(b"\n")
    objects = 0
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        line = read_line(number, raw.rstrip(b"\r"))
        if line.url is not None and line.url not in known:
            raise InvalidArgument(
                "file",
                f"line {number} names url {line.url!r}, which this server does not answer; "
                f"it answers {', '.join(sorted(known))}",
            )
        objects += line.problem is None or line.custom_id is not None
    if not objects:
        raise InvalidArgument(
            "file",
            "holds no line that is a JSON object: a job's input is JSONL, one request a line",
        )
    return sum(1 for raw in lines if raw.strip())
