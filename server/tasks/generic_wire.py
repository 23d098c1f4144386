"""Generic heads' values on the wire: a Struct of options in, a HeadOutput out."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from headserve.plugins.contract import Head, Output
from headserve.v1 import heads_pb2 as pb

from ..errors import HeadFailed
from .wire import tensor


def plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python values. Unlike json_format, NaN and infinity pass through,
    so the option checks can name the field instead of the conversion failing."""
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return plain(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


def head_output(head: Head, output: Output) -> pb.HeadOutput:
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
