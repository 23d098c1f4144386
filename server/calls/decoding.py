"""A gRPC request's bytes into its message, and what answers bytes that are not one.

A deserializer that raised would get the caller UNKNOWN from gRPC, before any of our code
runs; instead the bytes become an `Undecodable`, which the call refuses with
INVALID_ARGUMENT once it is admitted (its token checked, its access line written).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError, Message

from ..errors import InvalidArgument


class Undecodable:
    """A request whose bytes are not its message."""

    id = ""
    items = ()

    def __init__(self, message: str, error: DecodeError) -> None:
        self.refusal = InvalidArgument("request", f"is not a valid {message} message ({error})")


def decoder(kind: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer for `kind`: its message, or an Undecodable."""

    def decode(data: bytes) -> Any:
        try:
            return kind.FromString(data)
        except DecodeError as exc:
            return Undecodable(kind.DESCRIPTOR.full_name, exc)

    return decode


def decoded(request: Any) -> Any:
    """`request`, or its refusal raised."""
    if isinstance(request, Undecodable):
        raise request.refusal
    return request
