"""Decoding ``headserve.v1.Tensor`` (shape, dtype, little-endian row-major bytes) into numpy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from headserve.v1 import common_pb2

__all__ = ["decode_tensor"]

# Wire dtype -> (little-endian numpy dtype of the bytes, the native dtype handed to the caller).
_DTYPES: dict[int, tuple[np.dtype[Any], np.dtype[Any]]] = {
    common_pb2.DTYPE_FLOAT32: (np.dtype("<f4"), np.dtype(np.float32)),
    common_pb2.DTYPE_FLOAT16: (np.dtype("<f2"), np.dtype(np.float16)),
    common_pb2.DTYPE_INT64: (np.dtype("<i8"), np.dtype(np.int64)),
    common_pb2.DTYPE_INT32: (np.dtype("<i4"), np.dtype(np.int32)),
}


def decode_tensor(tensor: common_pb2.Tensor) -> npt.NDArray[Any]:
    """The tensor as a read-only C-ordered numpy array of its shape.

    bfloat16 has no numpy dtype: it becomes float32, exactly (a bfloat16 is the high half of a
    float32). Raises ``ValueError`` for an unknown dtype or a byte count that does not fit the
    shape.
    """
    shape = tuple(int(n) for n in tensor.shape)
    if tensor.dtype == common_pb2.DTYPE_BFLOAT16:
        wire = np.dtype("<u2")
    elif tensor.dtype in _DTYPES:
        wire = _DTYPES[tensor.dtype][0]
    else:
        raise ValueError(f"tensor has unsupported dtype {tensor.dtype}")
    count = math.prod(shape)
    if any(n < 0 for n in shape) or len(tensor.data) != count * wire.itemsize:
        raise ValueError(
            f"tensor of shape {list(shape)} and {wire.itemsize}-byte elements needs "
            f"{count * wire.itemsize} bytes, got {len(tensor.data)}"
        )
    raw = np.frombuffer(tensor.data, dtype=wire)
    array: npt.NDArray[Any]
    if tensor.dtype == common_pb2.DTYPE_BFLOAT16:
        array = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        array = raw.astype(_DTYPES[tensor.dtype][1], copy=False)
    array = array.reshape(shape)
    array.flags.writeable = False
    return array
