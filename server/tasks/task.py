"""What describes a task, once: everything each transport needs to serve it.

A `Task` names its RPC in the contract (its service and method, hence its request and
response messages, and its `...Stream` form when it has one), how a request is answered (its
conversion from and to the wire, its options included), the heads whose presence makes its
service SERVING, its routes on the OpenAI-style HTTP endpoint, and how RunHeads runs one of
its heads. The gRPC server, the Ray Serve replica, health and reflection are built from the
table of them (tasks/__init__.py); docs/architecture.md shows the way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from .wire import Call

if TYPE_CHECKING:
    from ..core.engine import Core

GENERIC = "*"  # serving: a usable head of any task outside the built-in ones

# What answers a request: the loaded core, the request message, what the call allows
Answer = Callable[["Core", Any, Call], Awaitable[Message]]
# What answers an HTTP route: the core, the request's JSON body (None for a GET), the call
JsonAnswer = Callable[["Core", Any, Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    """A route of the OpenAI-style HTTP endpoint that answers with this task."""

    method: str  # "POST"
    path: str  # "/v1/embeddings"
    answer: JsonAnswer


@dataclass(frozen=True)
class HeadForm:
    """How Heads.RunHeads runs a head of this task: its options from the HeadCall, its
    result into a HeadResult."""

    task: str  # the heads' task, as their plugins declare it ("mlm")
    options_field: str  # the HeadCall.options field that carries them ("predict_tokens")
    options: Callable[[Any], Any]  # that message -> the options the heads take
    result: Callable[[Any], Message]  # one head's result for one item -> a HeadResult


@dataclass(frozen=True)
class Task:
    name: str  # "encode"
    service: ServiceDescriptor  # from the contract's generated module
    rpc: str  # its unary method ("Encode"); its stream, if `streams`, is rpc + "Stream"
    answer: Answer
    serving: str | None = None  # the heads' task that makes the service SERVING; GENERIC;
    # None: the backbone alone
    streams: bool = True
    http: tuple[Route, ...] = ()
    heads: HeadForm | None = None
    admin: bool = False  # an admin RPC (HeadAdmin): needs an admin token

    def __post_init__(self) -> None:
        method = self.service.methods_by_name.get(self.rpc)
        if method is None or method.client_streaming or method.server_streaming:
            raise ValueError(f"{self.service.full_name} has no unary method {self.rpc}")
        if self.streams:
            stream = self.service.methods_by_name.get(self.stream_rpc)
            if stream is None or not (stream.client_streaming and stream.server_streaming):
                raise ValueError(f"{self.service.full_name} has no stream {self.stream_rpc}")
            if stream.input_type is not method.input_type:
                raise ValueError(f"{self.stream_rpc} must take {self.rpc}'s request")

    @property
    def method(self) -> MethodDescriptor:
        return self.service.methods_by_name[self.rpc]

    @property
    def full_name(self) -> str:
        """As gRPC and the access log name it: "headserve.v1.Encoder/Encode"."""
        return f"{self.service.full_name}/{self.rpc}"

    @property
    def stream_rpc(self) -> str:
        return f"{self.rpc}Stream"

    @property
    def request(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    @property
    def stream_reply(self) -> type[Message]:
        """The stream's reply message: an id, and a response or an error Status."""
        output = self.service.methods_by_name[self.stream_rpc].output_type
        return message_factory.GetMessageClass(output)
