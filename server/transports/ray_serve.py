"""headserve as a Ray Serve application: one backbone per application, replicated by Serve.

Each replica loads the backbone and its heads from the same Settings as `headserve serve` and
runs its own scheduler; Serve's gRPC proxy routes every headserve.v1 RPC to the method of that
name on the replica (`application` metadata picks the application when there are several).
Every call runs through the call pipeline (pipeline.py) and is answered as the standalone
server answers it (the table of tasks, tasks/): bearer tokens, request ids, the access log,
headserve's metrics and spans are the standalone server's. What differs is the transport,
which `_RayContext` adapts, and three things Serve does itself:

- Its deadline. The proxy does not pass the caller's `grpc-timeout` on (the replica's
  context has no time remaining); it bounds each call by Serve's `request_timeout_s`. The
  replica is told that value (`start`, `application`, `headserve ray-config
  --request-timeout`), and a call's deadline is that long after the replica received it.
- How many calls at once: Serve's `max_ongoing_requests` per replica (the proxy queues the
  rest, up to `max_queued_requests`); --max-concurrent-calls does not apply. --max-streams does.
- Its metrics port: the replica records headserve's metrics through Ray's (ray_metrics.py),
  which Ray exports on each node's metrics port as `ray_headserve_...`; the access log goes
  to the replica's stderr (Ray's worker logs), one JSON line per call.

Batch jobs are not served here: the replicas share no job store, so every RPC of the Jobs
service answers UNIMPLEMENTED (JOBS_OFF), saying so (`headserve ray-config` refuses
--jobs-dir).

And two limits of the proxy:
- Ray's gRPC context has no abort. An error sets the code, the message and the trailing
  metadata (with `grpc-status-details-bin`: the google.rpc details) and then RETURNS an empty
  response: raising would keep the code but drop the details.
- A stream's per-request errors travel inside the stream, as everywhere. An error that ends
  a whole stream (too many streams, a drain, a download of batch jobs) is raised with its
  code set on the context: the proxy keeps the code and the message but not the details
  (a stream that returned instead would end OK, its code dropped).

Ray Serve is an extra (`pip install headserve[ray]`); nothing else in the server imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from ..call_info import CURRENT, REQUEST_ID_KEY, current_request_id
from ..calls.pipeline import Admission, Arrival, Call, Pipeline, items_in
from ..calls.state import ServerState
from ..calls.status import abort, trailers
from ..core.engine import Core
from ..core.live_heads import FOLLOW_EVERY, LiveHeads
from ..errors import JobsOff
from ..jobs.grpc_api import SERVICE as JOBS
from ..loading import Settings, build_core, settings_from
from ..observability import logs
from ..observability.metrics import Metrics
from ..tasks import TASKS, Task, services
from ..tasks.running import Streaming, Unary, answering

log = logging.getLogger(__name__)

DEPLOYMENT = "headserve"  # the deployment's name in every application


def start(port: int, request_timeout_s: float | None = None, **options: Any) -> None:
    """Start Serve (on the Ray that `ray.init` joined) with its gRPC proxy on `port`, routing
    every headserve.v1 service, each call bounded by `request_timeout_s` (None: unbounded;
    give each application the same: `application`); `options` go to `serve.start`."""
    from ray import serve
    from ray.serve.config import gRPCOptions

    grpc_options = gRPCOptions(
        port=port,
        grpc_servicer_functions=servicer_functions(),
        request_timeout_s=request_timeout_s,
    )
    serve.start(grpc_options=grpc_options, **options)


def servicer_functions(tasks: Sequence[Task] = TASKS) -> list[str]:
    """What `gRPCOptions(grpc_servicer_functions=...)` needs: the function protoc generated
    to add each service of `tasks` to a gRPC server (the proxy learns the methods from it),
    and the Jobs service's (whose RPCs answer JOBS_OFF on Ray Serve)."""
    functions = []
    for service in (*(s for s, _ in services(tasks).values()), JOBS):
        module = service.file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc"
        functions.append(f"{module}.add_{service.name}Servicer_to_server")
    return functions


class _Aborted(Exception):
    """The call ended with an error status, already set on Ray's context."""


class _RayContext:
    """What the pipeline and status.abort ask of a call's context, over Ray's gRPC context."""

    def __init__(self, ray_context: Any) -> None:
        self._context = ray_context

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._context.invocation_metadata() or ())

    def peer(self) -> str:
        return str(self._context.peer() or "")

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        self._context.set_code(status.code)
        self._context.set_details(status.details)
        self._context.set_trailing_metadata(list(status.trailing_metadata))  # Ray wants a list
        raise _Aborted

    def set_trailing(self, metadata: list[tuple[str, str]]) -> None:
        self._context.set_trailing_metadata(metadata)


@dataclass(frozen=True)
class _Rpc:
    full_name: str  # "headserve.v1.Encoder/Encode", as the standalone server names it
    unary: Unary | None  # what answers it (a unary RPC)
    streaming: Streaming | None  # what answers it (a stream)
    reply: type[Message]  # the response type: an empty one carries an error status
    admin: bool = False  # an admin RPC (HeadAdmin): needs an admin token


def _rpcs(state: ServerState, tasks: Sequence[Task]) -> dict[str, _Rpc]:
    rpcs = {}
    for task in tasks:
        one, many = answering(state, task)
        rpcs[task.rpc] = _Rpc(task.full_name, one, None, task.response, task.admin)
        if many is not None:
            full_name = f"{task.service.full_name}/{task.stream_rpc}"
            rpcs[task.stream_rpc] = _Rpc(full_name, None, many, task.stream_reply)
    for method in JOBS.methods:  # each answers JOBS_OFF, through the pipeline
        reply = message_factory.GetMessageClass(method.output_type)
        full_name = f"{JOBS.full_name}/{method.name}"
        if method.server_streaming:
            rpcs[method.name] = _Rpc(full_name, None, _no_job_stream, reply)
        else:
            rpcs[method.name] = _Rpc(full_name, _no_jobs, None, reply)
    return rpcs


RAY_NO_JOBS = (
    "batch jobs are not served on Ray Serve: the replicas share no job store; run them on a "
    "standalone `headserve serve --jobs-dir DIR`"
)


async def _no_jobs(request: Any) -> Message:
    raise JobsOff(RAY_NO_JOBS)


async def _no_job_stream(requests: Any) -> AsyncIterator[Message]:
    raise JobsOff(RAY_NO_JOBS)
    yield  # pragma: no cover (makes this an async generator)


class Replica:
    """One replica: a backbone, its heads and its scheduler, behind the RPCs of its `tasks`
    (a method each, named as the proxy calls it: `replica`)."""

    tasks: tuple[Task, ...] = ()

    async def __init__(  # type: ignore[misc]  # Ray awaits it
        self, settings: Settings, request_timeout_s: float | None = None
    ) -> None:
        import ray

        from ..observability.ray_metrics import RayInstruments
        from ..observability.tracing import Tracing

        # Outside a Ray worker (a test calling the methods as the proxy would) the process's
        # logging is left alone, and the metrics are kept in a registry of their own.
        in_ray = ray.is_initialized()
        if in_ray:
            logs.configure_logger("headserve", "INFO", "json")  # into Ray's worker logs
            logs.quiet_transformers()  # as `headserve serve` is
        instruments = RayInstruments() if in_ray else None
        metrics = Metrics(instruments)
        tracing = Tracing.from_settings(settings.otlp_endpoint)
        core = await asyncio.to_thread(build_core, settings, metrics, tracing)
        await core.scheduler.start()
        limits = settings.request_limits
        self._state = ServerState(
            limits,
            core=core,
            tracing=tracing,
            stream_idle_timeout=settings.connections.stream_idle_timeout,
        )
        admission = Admission(
            tokens=settings.security.tokens,
            open_health=True,
            admin_tokens=settings.security.admin_tokens,
            max_streams=limits.max_streams,
        )
        self._follower = self._follow_store(core)
        self._pipeline = Pipeline(
            self._state,
            admission,
            metrics=metrics,
            tracing=tracing,
            access_log=settings.access_log,
        )
        self._timeout = request_timeout_s
        self._rpcs = _rpcs(self._state, self.tasks)
        if instruments is not None:
            self._refresh = asyncio.ensure_future(instruments.keep_fresh())

    def _follow_store(self, core: Core) -> asyncio.Future[Any] | None:
        """Heads change at run time on Ray Serve only through a store every replica shares
        (`--head-store`): this replica follows it, and says which revision it serves."""
        live = core.live
        if live is None:
            return None
        if live.store is None:
            core.live, core.live_off = None, RAY_NEEDS_STORE
            return None
        live.replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return asyncio.ensure_future(asyncio.gather(_follow(live), _heartbeat(live)))

    def check_health(self) -> None:
        """Serve's replica health check: a stopped scheduler is a dead replica."""
        core = self._state.core
        if core is None or not core.scheduler.started:
            raise RuntimeError("the scheduler is not running")

    def _arrival(self, rpc: _Rpc, context: _RayContext, request: Any = None) -> Arrival:
        return Arrival(
            "ray",
            rpc.full_name,
            context.invocation_metadata(),
            self._timeout,
            context.peer(),
            items=0 if request is None else items_in(request),
            stream=rpc.streaming is not None,
            admin=rpc.admin,
        )

    async def _unary(self, name: str, request: Any, grpc_context: Any) -> Message:
        rpc, context = self._rpcs[name], _RayContext(grpc_context)
        token = CURRENT.set(None)
        try:

            async def work(call: Call) -> Message:
                assert rpc.unary is not None
                response: Message = await rpc.unary(request)
                return response

            response = await self._pipeline.unary(self._arrival(rpc, context, request), work)
            # the proxy sends no initial metadata: the id goes back in the trailing metadata,
            # with the versions of the heads that answered
            context.set_trailing([(REQUEST_ID_KEY, current_request_id() or ""), *trailers()])
            return response
        except Exception as exc:
            try:
                await abort(context, exc)
            except _Aborted:
                pass
            return rpc.reply()
        finally:
            CURRENT.reset(token)

    async def _stream(
        self, name: str, requests: AsyncIterator[Any], grpc_context: Any
    ) -> AsyncIterator[Message]:
        rpc, context = self._rpcs[name], _RayContext(grpc_context)
        token = CURRENT.set(None)

        def work(call: Call) -> AsyncIterator[Message]:
            assert rpc.streaming is not None
            replies: AsyncIterator[Message] = rpc.streaming(call.reading(requests))
            return replies

        try:
            async for reply in self._pipeline.stream(self._arrival(rpc, context), work):
                yield reply
        except Exception as exc:
            # raised with its code set on Ray's context: the proxy keeps the code and the
            # message (not the details); a stream that returned would end OK
            await abort(context, exc)
        finally:
            CURRENT.reset(token)


RAY_NEEDS_STORE = (
    "on Ray Serve the replicas change heads together through a head store they share: run "
    "the application with --head-store DIR, a folder every replica can read and write"
)


async def _follow(live: LiveHeads) -> None:
    """Follow the shared store: serve each newer revision another replica wrote, looking
    twice a second, until the replica stops."""
    while True:
        try:
            await live.follow()
        except Exception:  # noqa: BLE001 (the next look tries again)
            log.exception("following the head store %s", live.store and live.store.root)
        await asyncio.sleep(FOLLOW_EVERY)


async def _heartbeat(live: LiveHeads) -> None:
    """Note in the store which revision this replica serves, twice a second (a replica
    loading a newer one is still heard from: the change waits for it)."""
    store, replica = live.store, live.replica
    assert store is not None and replica is not None
    while True:
        try:
            await asyncio.to_thread(store.ack, replica, live.served)
        except OSError:
            log.exception("noting this replica in the head store %s", store.root)
        await asyncio.sleep(FOLLOW_EVERY)


def _unary_method(name: str) -> Callable[..., Any]:
    async def method(self: Replica, request: Any, grpc_context: Any) -> Message:
        return await self._unary(name, request, grpc_context)

    method.__name__ = method.__qualname__ = name
    return method


def _stream_method(name: str) -> Callable[..., Any]:
    async def method(
        self: Replica, request_stream: Any, grpc_context: Any
    ) -> AsyncIterator[Message]:
        async for reply in self._stream(name, request_stream, grpc_context):
            yield reply

    method.__name__ = method.__qualname__ = name
    return method


def replica(tasks: Sequence[Task], name: str = "HeadserveReplica") -> type[Replica]:
    """A replica class answering `tasks`: a method per RPC, named as the proxy calls it."""
    methods: dict[str, Any] = {"tasks": tuple(tasks), "__module__": __name__}
    for task in tasks:
        methods[task.rpc] = _unary_method(task.rpc)
        if task.streams:
            methods[task.stream_rpc] = _stream_method(task.stream_rpc)
    for method in JOBS.methods:
        made_for = _stream_method if method.server_streaming else _unary_method
        methods[method.name] = made_for(method.name)
    made = type(name, (Replica,), methods)
    made.__qualname__ = name
    return made


HeadserveReplica = replica(TASKS)  # every headserve.v1 RPC


def application(
    settings: Settings, request_timeout_s: float | None = None, **deployment_options: Any
) -> Any:
    """A Serve application serving `settings`' backbone, each call's deadline
    `request_timeout_s` after it reaches a replica (the proxy's, given to `start`);
    `deployment_options` go to `serve.deployment` (num_replicas, autoscaling_config,
    max_ongoing_requests, ray_actor_options...)."""
    from ray import serve

    deployment = serve.deployment(name=DEPLOYMENT, **deployment_options)(HeadserveReplica)
    return deployment.bind(settings, request_timeout_s)


def build(args: dict[str, Any]) -> Any:
    """Serve's application builder for a config file (`import_path:
    headserve.server.transports.ray_serve:build`, written by `headserve ray-config`):
    `args["settings"]` is the application's Settings as plain values (loading.settings_mapping:
    what `headserve serve` would run with), `args["request_timeout_s"]` the proxy's request
    timeout; the file's `deployments:` entry sizes the replicas."""
    timeout = args.get("request_timeout_s")
    return application(
        settings_from(args.get("settings", {})),
        float(timeout) if timeout is not None else None,
    )
