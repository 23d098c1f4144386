"""The table of tasks: every RPC of the contract the server answers, each described once
(task.py). The gRPC server, the Ray Serve replica, the HTTP endpoint's task routes, health
and reflection all come from this table (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import ServiceDescriptor

from . import (
    answer_question,
    classify,
    encode,
    head_admin,
    models,
    predict_tokens,
    rerank,
    run,
    run_heads,
)
from .task import GENERIC, HeadForm, Route, Task

TASKS: tuple[Task, ...] = (
    encode.TASK,
    predict_tokens.TASK,
    classify.TASK,
    answer_question.TASK,
    run.TASK,
    run_heads.TASK,
    models.MODEL_INFO,
    models.TOKENIZE,
    rerank.TASK,
    head_admin.LOAD,
    head_admin.UNLOAD,
    head_admin.SET_DEFAULT,
    head_admin.PROMOTE,
)


def services(tasks: Sequence[Task]) -> dict[str, tuple[ServiceDescriptor, tuple[Task, ...]]]:
    """Each service the tasks make up, by full name, with its tasks (in table order)."""
    found: dict[str, tuple[ServiceDescriptor, tuple[Task, ...]]] = {}
    for task in tasks:
        service, held = found.get(task.service.full_name, (task.service, ()))
        found[service.full_name] = (service, (*held, task))
    return found


__all__ = ["GENERIC", "TASKS", "HeadForm", "Route", "Task", "services"]
