"""What every task's description converts with: a request's items and options from the wire,
a response's usage, timing and tensors to it; and `Call`, what an answer knows of its call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from headserve.plugins.contract import InvalidInput
from headserve.plugins.tasks import ImageItem, TextItem
from headserve.v1 import common_pb2, encoder_pb2

from ..call_info import CURRENT
from ..core.engine import Outcome
from ..errors import InvalidArgument

Opts = TypeVar("Opts")
T = TypeVar("T")

# where chunks are cut: Encode's and Classify's long texts
CHUNK_BY = {
    encoder_pb2.CHUNK_BY_UNSPECIFIED: "tokens",
    encoder_pb2.CHUNK_BY_TOKENS: "tokens",
    encoder_pb2.CHUNK_BY_SENTENCES: "sentences",
}


@dataclass(frozen=True)
class Call:
    """What a handler needs to know of the RPC it serves."""

    deadline: float | None  # on time.perf_counter(), the scheduler's clock
    wait_for_room: bool  # streams wait for queue space; unary calls are refused at once

    @classmethod
    def current(cls, *, stream: bool) -> Call:
        """The running call's (its deadline as the call pipeline set it; none outside a call)."""
        info = CURRENT.get()
        return cls(info.deadline if info is not None else None, stream)


def chosen(message: Any, name: str, values: Mapping[Any, T]) -> T:
    """The plain value of an enum option of `message`; a number this server does not know
    (a newer client's) is INVALID_ARGUMENT naming the option."""
    given = getattr(message, name)
    if given not in values:
        raise InvalidArgument(f"options.{name}", f"unknown value {given}")
    return values[given]


def options(kind: Callable[..., Opts], **fields: Any) -> Opts:
    """A task's options from a request's fields. A field given as None is unset on the wire
    (proto3's 0) and takes the default of the options dataclass, where every default is
    defined. A bad option is INVALID_ARGUMENT."""
    try:
        return kind(**{name: value for name, value in fields.items() if value is not None})
    except InvalidInput as exc:
        raise InvalidArgument(exc.field, exc.message) from exc


def usage_timing(outcome: Outcome) -> dict[str, Any]:
    """Usage and Timing message fields for a response."""
    return {
        "usage": common_pb2.Usage(input_tokens=outcome.input_tokens),
        "timing": common_pb2.Timing(queue_ms=outcome.queue_ms, inference_ms=outcome.inference_ms),
    }


def text_items(items: Any) -> list[TextItem | ImageItem]:
    """The request's items: a text (or pair), or an image (`TextInput.image`)."""
    converted: list[TextItem | ImageItem] = []
    for index, item in enumerate(items):
        if item.HasField("image"):
            if item.text or item.HasField("text_pair"):
                raise InvalidArgument(
                    f"items[{index}]",
                    "carries an image and text: send one or the other",
                    item=index,
                )
            converted.append(ImageItem(item.image.data))
        else:
            converted.append(
                TextItem(item.text, item.text_pair if item.HasField("text_pair") else None)
            )
    return converted


def tensor(array: np.ndarray) -> common_pb2.Tensor:
    """A numpy array as a Tensor message: row-major, little-endian."""
    dtype = _DTYPES[array.dtype.name]
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return common_pb2.Tensor(shape=list(array.shape), dtype=dtype, data=data)


_DTYPES = {
    "float32": common_pb2.DTYPE_FLOAT32,
    "float16": common_pb2.DTYPE_FLOAT16,
    "int64": common_pb2.DTYPE_INT64,
    "int32": common_pb2.DTYPE_INT32,
}
