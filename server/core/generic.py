"""Generic heads (tasks outside the built-in four): their options, schema and outputs.

The Heads service passes a request's options as JSON values; `parse_params` checks
them against the head's declared parameters, so every head gets typed options and
every caller gets the same errors. `check_output` holds a head to its own schema.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from headserve.plugins.contract import Head, Output, Parameter, RunOptions

from ..errors import HeadFailed, InvalidArgument

TENSOR_TYPES = ("float32", "float16", "int32", "int64")


def schema_problem(head: Head) -> str | None:
    """Why a generic head's declared schema is unusable, or None."""
    if not head.outputs:
        return "declares no outputs (Head.outputs): no RPC could return its results"
    names = [f.name for f in head.outputs]
    if len(set(names)) != len(names):
        return f"declares an output name twice: {names}"
    for f in head.outputs:
        if f.kind not in ("value", "tensor"):
            return f"output {f.name!r}: kind must be 'value' or 'tensor', not {f.kind!r}"
        if f.kind == "tensor" and f.type not in TENSOR_TYPES:
            return f"output {f.name!r}: tensor type must be one of {TENSOR_TYPES}"
    for p in head.parameters:
        if p.type not in ("string", "number", "integer", "boolean"):
            return f"parameter {p.name!r}: unknown type {p.type!r}"
        try:
            _typed(p, p.default)
        except ValueError as exc:
            return f"parameter {p.name!r}: default {p.default!r} {exc}"
    return None


def parse_params(head: Head, raw: Mapping[str, Any], *, truncate: bool) -> RunOptions:
    """The head's options from a request's JSON values: checked, typed, defaults filled."""
    declared = {p.name: p for p in head.parameters}
    for name in raw:
        if name not in declared:
            takes = ", ".join(declared) or "no options"
            raise InvalidArgument(
                f"options.{name}", f"head {head.name!r} has no such option (it takes: {takes})"
            )
    params = {}
    for name, parameter in declared.items():
        try:
            params[name] = _typed(parameter, raw[name]) if name in raw else parameter.default
        except ValueError as exc:
            raise InvalidArgument(f"options.{name}", f"{raw[name]!r} {exc}") from exc
    return RunOptions(params, truncate)


def _typed(parameter: Parameter, value: Any) -> Any:
    kind = parameter.type
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError("is not a boolean")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise ValueError("is not a string")
        if parameter.choices and value not in parameter.choices:
            raise ValueError(f"is not one of {', '.join(parameter.choices)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"is not a finite {kind}")
    if kind == "integer":
        if value != int(value):
            raise ValueError("is not an integer")
        return int(value)
    return float(value)


def check_output(head: Head, output: Any) -> Output:
    """The head's result for one item, held to its schema; a violation is the head's bug."""

    def fail(message: str) -> HeadFailed:
        return HeadFailed(f"head {head.name!r} broke its output schema: {message}", head=head.name)

    if not isinstance(output, Output):
        raise fail(f"finish returned {type(output).__name__}, not Output")
    schema = {f.name: f for f in head.outputs}
    for kind, values in (("value", output.fields), ("tensor", output.tensors)):
        for name in values:
            declared = schema.get(name)
            if declared is None or declared.kind != kind:
                raise fail(f"undeclared {kind} {name!r}")
    for f in head.outputs:
        present = f.name in (output.fields if f.kind == "value" else output.tensors)
        if not present and not f.optional:
            raise fail(f"missing {f.kind} {f.name!r}")
        if present and f.kind == "tensor":
            array = output.tensors[f.name]
            if not isinstance(array, np.ndarray) or array.dtype.name != f.type:
                raise fail(f"tensor {f.name!r} is not a numpy array of {f.type}")
    return output
