"""headserve as a Ray Serve application: one backbone per application, replicated by Serve.

Each replica loads the backbone and its heads from the same Settings as `headserve serve` and
runs its own scheduler; Serve's gRPC proxy routes every headserve.v1 RPC to the method of that
name on the replica (`application` metadata picks the application when there are several).
The replica answers with the standalone server's own servicers (app.SERVICERS): what differs
is only the transport, and `_RayContext` adapts it:

- Ray's gRPC context has no abort. An error sets the code, the message and the trailing
  metadata (with `grpc-status-details-bin`: the google.rpc details) and then RETURNS an empty
  response: raising would keep the code but drop the details.
- The proxy has no interceptors: the replica checks bearer tokens itself (the same
  UNAUTHENTICATED answer) and gives each call its request id.
- A stream's per-request errors travel inside the stream, as everywhere. An error that ends
  a whole stream (too many streams, a drain) ends it without its code: the proxy drops the
  code of a stream that returns without a last reply.

Ray Serve is an extra (`pip install headserve[ray]`); nothing else in the server imports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from .app import SERVICERS, ServerState, Settings, build_core
from .call_info import CURRENT, REQUEST_ID_KEY, begin_call
from .errors import Unauthenticated
from .security import DENIED, TokenAuth
from .status import abort

log = logging.getLogger(__name__)

DEPLOYMENT = "headserve"  # the deployment's name in every application


def start(port: int, **options: Any) -> None:
    """Start Serve (on the Ray that `ray.init` joined) with its gRPC proxy on `port`, routing
    every headserve.v1 service; `options` go to `serve.start` (http_options...)."""
    from ray import serve
    from ray.serve.config import gRPCOptions

    grpc_options = gRPCOptions(port=port, grpc_servicer_functions=servicer_functions())
    serve.start(grpc_options=grpc_options, **options)


def servicer_functions() -> list[str]:
    """What `gRPCOptions(grpc_servicer_functions=...)` needs: every headserve.v1 service."""
    return [f"{add.__module__}.{add.__name__}" for _, _, add in SERVICERS]


class _Aborted(Exception):
    """The call ended with an error status, already set on Ray's context."""


class _RayContext:
    """The part of grpc.aio.ServicerContext the servicers use, over Ray's gRPC context."""

    def __init__(self, ray_context: Any) -> None:
        self._context = ray_context

    def time_remaining(self) -> float | None:
        return None  # the proxy passes no deadline on; its request_timeout_s bounds a call

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._context.invocation_metadata() or ())

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self._context.set_code(status.code)
        self._context.set_details(status.details)
        self._context.set_trailing_metadata(list(status.trailing_metadata))  # Ray wants a list
        raise _Aborted

    def set_trailing(self, key: str, value: str) -> None:
        self._context.set_trailing_metadata([(key, value)])


@dataclass(frozen=True)
class _Rpc:
    name: str
    full_name: str  # "headserve.v1.Encoder/Encode", as the standalone server names it
    call: Callable[..., Any]  # the servicer's method
    streaming: bool
    reply: type[Message]  # the response type: an empty one carries an error status


def _rpcs(state: ServerState) -> dict[str, _Rpc]:
    rpcs = {}
    for service, make, _ in SERVICERS:
        servicer = make(state)
        for method in service.methods:
            rpcs[method.name] = _Rpc(
                method.name,
                f"{service.full_name}/{method.name}",
                getattr(servicer, method.name),
                method.client_streaming,
                message_factory.GetMessageClass(method.output_type),
            )
    return rpcs


class HeadserveReplica:
    """One replica: a backbone, its heads and its scheduler, behind every headserve.v1 RPC."""

    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]  # Ray awaits it
        core = await asyncio.to_thread(build_core, settings)
        await core.scheduler.start()
        self._state = ServerState(settings.request_limits, core=core)
        self._rpcs = _rpcs(self._state)
        tokens = settings.security.tokens
        self._auth = TokenAuth(tokens, open_health=True) if tokens else None

    def check_health(self) -> None:
        """Serve's replica health check: a stopped scheduler is a dead replica."""
        core = self._state.core
        if core is None or not core.scheduler.started:
            raise RuntimeError("the scheduler is not running")

    async def _unary(self, name: str, request: Any, grpc_context: Any) -> Message:
        rpc, context = self._rpcs[name], _RayContext(grpc_context)
        token = CURRENT.set(None)
        try:
            request_id = await self._admit(name, context)
            response: Message = await rpc.call(request, context)
            # the proxy sends no initial metadata: the id goes back in the trailing metadata
            context.set_trailing(REQUEST_ID_KEY, request_id)
            return response
        except _Aborted:
            return rpc.reply()
        finally:
            CURRENT.reset(token)

    async def _stream(
        self, name: str, requests: AsyncIterator[Any], grpc_context: Any
    ) -> AsyncIterator[Message]:
        rpc, context = self._rpcs[name], _RayContext(grpc_context)
        token = CURRENT.set(None)
        try:
            await self._admit(name, context)
            async for reply in rpc.call(requests, context):
                yield reply
        except _Aborted:
            return
        finally:
            CURRENT.reset(token)

    async def _admit(self, name: str, context: _RayContext) -> str:
        """What the standalone server's interceptors do: the token, then the request id."""
        metadata = context.invocation_metadata()
        if self._auth is not None and not self._auth.allows(metadata):
            await abort(context, Unauthenticated(DENIED))
        call, refused = begin_call(metadata, self._rpcs[name].full_name)
        if refused is not None:
            await abort(context, refused)
        return call.request_id


def _unary_method(name: str) -> Callable[..., Any]:
    async def method(self: HeadserveReplica, request: Any, grpc_context: Any) -> Message:
        return await self._unary(name, request, grpc_context)

    method.__name__ = method.__qualname__ = name
    return method


def _stream_method(name: str) -> Callable[..., Any]:
    async def method(
        self: HeadserveReplica, request_stream: Any, grpc_context: Any
    ) -> AsyncIterator[Message]:
        async for reply in self._stream(name, request_stream, grpc_context):
            yield reply

    method.__name__ = method.__qualname__ = name
    return method


def _add_rpc_methods(cls: type) -> None:
    """A method per headserve.v1 RPC, named as the proxy calls it."""
    for service, _, _ in SERVICERS:
        method: MethodDescriptor
        for method in service.methods:
            make = _stream_method if method.client_streaming else _unary_method
            setattr(cls, method.name, make(method.name))


_add_rpc_methods(HeadserveReplica)


def application(settings: Settings, **deployment_options: Any) -> Any:
    """A Serve application serving `settings`' backbone; `deployment_options` go to
    `serve.deployment` (num_replicas, autoscaling_config, max_ongoing_requests,
    ray_actor_options...)."""
    from ray import serve

    deployment = serve.deployment(name=DEPLOYMENT, **deployment_options)(HeadserveReplica)
    return deployment.bind(settings)


def build(args: dict[str, Any]) -> Any:
    """Serve's application builder for a config file (`import_path:
    headserve.server.ray_serve:build`, written by `headserve ray-config`): `args["serve"]` is
    the list of `headserve serve` options; the file's `deployments:` entry sizes the replicas."""
    from .cli import serve_settings

    return application(serve_settings(list(args.get("serve", []))))
