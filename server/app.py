"""The gRPC server: services, standard health and reflection, loading, graceful stop."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from .call_info import RequestIdIn
from .calls.connections import Connections, check_budgets
from .calls.pipeline import Admission, Pipeline
from .calls.security import Security
from .calls.state import ServerState
from .core.engine import Core
from .core.limits import Limits, RequestLimits
from .core.memory import freeze_loaded_objects
from .discovery import StartupError
from .event_loop import kind_of
from .jobs import grpc_api as jobs_grpc
from .jobs.api import JobsApi
from .jobs.runner import Jobs
from .jobs.store import Store
from .loading import Settings, build_core
from .observability.logs import tag_records
from .observability.metrics import Metrics, MetricsServer
from .tasks import GENERIC, TASKS, Task, services
from .transports.grpc import CallInterceptor, handlers

if TYPE_CHECKING:
    from .jobs.openai_api import JobRoute
    from .observability.tracing import Tracing
    from .transports.http_server import HttpServer

DEFAULT_BATCH_ITEMS = Limits().max_batch_items
JOBS_OFF = "batch jobs are off: this server was started without --jobs-dir"
GIL_SWITCH_SECONDS = 0.001
log = logging.getLogger(__name__)


def admission(limits: RequestLimits, security: Security) -> Admission:
    """The standalone server's: its tokens, and its limits over every transport."""
    return Admission(
        tokens=security.tokens,
        open_health=security.open_health,
        admin_tokens=security.admin_tokens,
        max_calls=limits.max_concurrent_calls,
        max_streams=limits.max_streams,
    )


@dataclass
class Server:
    grpc_server: grpc.aio.Server
    port: int
    state: ServerState
    health: HealthServicer
    pipeline: Pipeline
    tasks: tuple[Task, ...] = TASKS
    http: HttpServer | None = None  # --http-port: the OpenAI-style endpoint
    jobs: Jobs | None = None  # --jobs-dir: batch jobs

    async def mark_ready(self, core: Core) -> None:
        await core.scheduler.start()
        self.state.core = core
        if self.jobs is not None:
            self.jobs.start()
        for service, (_, held) in services(self.tasks).items():
            ok = any(_serving(core, task.serving) for task in held)
            await self.health.set(
                service,
                health_pb2.HealthCheckResponse.SERVING
                if ok
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )
        if self.jobs is not None:
            await self.health.set(
                jobs_grpc.SERVICE.full_name, health_pb2.HealthCheckResponse.SERVING
            )
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Drain: health NOT_SERVING, no new calls, streams stop reading, and what was
        accepted is answered within `grace` seconds (None: cancel at once)."""
        await self.health.enter_graceful_shutdown()
        self.state.draining.set()
        if self.jobs is not None:  # what it did not commit is answered again after a start
            await self.jobs.stop()
        if self.http is not None:  # both transports drain at once
            await asyncio.gather(self.grpc_server.stop(grace), self.http.stop())
        else:
            await self.grpc_server.stop(grace)
        if self.state.core is not None:
            await self.state.core.scheduler.stop()
        if self.jobs is not None:
            self.jobs.close()
            self.jobs = None


async def create_server(
    address: str,
    limits: RequestLimits | None = None,
    security: Security | None = None,
    *,
    access_log: bool = True,
    request_id_in: RequestIdIn = "initial",
    tracing: Tracing | None = None,
    http_port: int | None = None,
    grace: float = 10.0,
    metrics: Metrics | None = None,
    tasks: Sequence[Task] = TASKS,
    connections: Connections | None = None,
    jobs_dir: Path | None = None,
    max_job_bytes: int = Settings.max_job_bytes,
) -> Server:
    """A started server on `address` ("host:0" picks a free port); NOT_SERVING until mark_ready.
    With `http_port`, the OpenAI-style HTTP endpoint too, on the same host (0: a free port).
    Its calls, on both, are counted in `metrics` (give build_core the same); it answers the
    RPCs of `tasks` (and their HTTP routes), health and reflection. With `jobs_dir`, batch jobs
    kept there (the Jobs service; OpenAI's Files and Batch APIs on the HTTP endpoint); without,
    both answer JOBS_OFF.

    Raises StartupError when it cannot listen there."""
    limits = limits or RequestLimits()
    security = security or Security()
    tag_records()  # log lines name the call they are about
    connections = connections or Connections()
    check_budgets(limits, connections)
    state = ServerState(
        limits, tracing=tracing, stream_idle_timeout=connections.stream_idle_timeout
    )
    metrics = metrics or Metrics()
    jobs = Jobs(Store(jobs_dir), state, tasks, metrics) if jobs_dir is not None else None
    try:
        return await _create(
            address,
            limits,
            security,
            connections,
            state,
            jobs,
            max_job_bytes,
            access_log=access_log,
            request_id_in=request_id_in,
            tracing=tracing,
            http_port=http_port,
            grace=grace,
            metrics=metrics,
            tasks=tasks,
        )
    except BaseException:
        if jobs is not None:
            jobs.close()
        raise


async def _create(
    address: str,
    limits: RequestLimits,
    security: Security,
    connections: Connections,
    state: ServerState,
    jobs: Jobs | None,
    max_job_bytes: int,
    *,
    access_log: bool,
    request_id_in: RequestIdIn,
    tracing: Tracing | None,
    http_port: int | None,
    grace: float,
    metrics: Metrics | None,
    tasks: Sequence[Task],
) -> Server:
    pipeline = Pipeline(
        state,
        admission(limits, security),
        metrics=metrics or Metrics(),
        tracing=tracing,
        access_log=access_log,
    )
    interceptors = [
        CallInterceptor(
            pipeline,
            tasks,
            request_id_in=request_id_in,
            max_health_watches=connections.max_health_watches,
            others=jobs_grpc.methods(),
        )
    ]
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            # gRPC's default lets a second server bind a port in use and share its calls
            # silently; a port in use must stop the start instead.
            ("grpc.so_reuseport", 0),
            *connections.grpc_options(),
        ],
        # gRPC refuses calls past the limit itself, before any of our code runs: the
        # cheapest refusal there is under a flood (BENCHMARKS.md, overload). Streams and
        # health watches have budgets inside it (check_budgets), so they never fill it.
        maximum_concurrent_rpcs=limits.max_concurrent_calls,
        interceptors=interceptors,
    )
    served = services(tasks)
    jobs_api = JobsApi(jobs, max_job_bytes) if jobs is not None else None
    server.add_generic_rpc_handlers(
        [
            *handlers(state, tasks),
            jobs_grpc.handler(jobs_api, JOBS_OFF, limits.max_message_bytes),
        ]
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in (*served, jobs_grpc.SERVICE.full_name, ""):
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    names = (
        *served,
        jobs_grpc.SERVICE.full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    try:
        _check_can_listen(address)
    except StartupError:
        await server.stop(None)
        raise
    try:
        credentials = security.credentials()
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except (RuntimeError, ValueError) as exc:  # grpc's "Failed to bind", a bad TLS file
        await server.stop(None)
        raise StartupError(f"cannot listen on {address}: {_first_clause(exc)}") from exc
    if port == 0:
        await server.stop(None)
        raise StartupError(f"cannot listen on {address}")
    await server.start()
    http = None
    if http_port is not None:
        try:
            from .jobs.openai_api import routes

            job_routes = routes(jobs_api, JOBS_OFF)
            http = await _start_http(
                state, pipeline, tasks, security, address, http_port, grace, connections, job_routes
            )
        except StartupError:
            await server.stop(None)
            raise
    return Server(server, port, state, health, pipeline, tuple(tasks), http, jobs)


async def _start_http(
    state: ServerState,
    pipeline: Pipeline,
    tasks: Sequence[Task],
    security: Security,
    address: str,
    port: int,
    grace: float,
    connections: Connections,
    job_routes: Sequence[JobRoute] = (),
) -> HttpServer:
    from .transports.http import OpenAIHttp
    from .transports.http_server import HttpServer

    host = address.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
    app = OpenAIHttp(
        state,
        pipeline,
        tasks,
        body_timeout=connections.http_body_timeout,
        max_json_values=connections.http_max_json_values,
        jobs=job_routes,
    ).app()
    return await HttpServer.start(
        app,
        host,
        port,
        security,
        grace=grace,
        connections=connections,
        metrics=pipeline.metrics,
    )


def _serving(core: Core, serving: str | None) -> bool:
    """Whether a task with this `serving` (task.py) can answer on `core`."""
    registry = core.registry
    if serving is None:
        return True
    if serving == GENERIC:
        return registry.has_usable_generic()
    return registry.has_usable(serving)


def _check_can_listen(address: str) -> None:
    """StartupError unless some address `address` names can be bound: checked before gRPC
    tries, which would log its own error lines first."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return  # port 0: a free one; gRPC reports anything else
    try:
        found = socket.getaddrinfo(
            host.strip("[]") or None,
            int(port),
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {address}: {exc.strerror}") from exc
    failures = []
    for family, kind, proto, _, where in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
                return
            except OSError as exc:
                failures.append(exc.errno or 0)
    why = {
        errno.EADDRINUSE: "the port is in use",
        errno.EADDRNOTAVAIL: "that address is not one of this machine's",
        errno.EACCES: "not allowed to bind that port (below 1024?)",
    }.get(failures[0] if failures else 0, "it cannot be bound")
    raise StartupError(f"cannot listen on {address}: {why}")


def _first_clause(exc: BaseException) -> str:
    """grpc's bind error, without its advice to set GRPC_VERBOSITY (the port is in use, or
    the address is not this machine's)."""
    text = str(exc).split(";")[0]
    if text.startswith("Failed to bind"):
        return "the port is in use, or the address is not one of this machine's"
    return text


async def serve(settings: Settings, address: str) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully.

    Raises StartupError, with one line that says why, when the server cannot start."""
    from .observability.tracing import Tracing, TracingUnavailable

    # A thread that runs Python (a plugin head's prepare or finish, a model worker's eager
    # layers) keeps the GIL from the event loop for up to this long each time the loop wants
    # it: 5 ms by default. 1 ms bounds that wait (bench/slow_head.py, BENCHMARKS.md).
    sys.setswitchinterval(GIL_SWITCH_SECONDS)

    try:
        tracing = Tracing.from_settings(settings.otlp_endpoint)
    except TracingUnavailable as exc:
        raise StartupError(str(exc)) from exc
    metrics = Metrics()
    exporter = None
    server = None
    try:
        if settings.metrics_port is not None:
            try:
                exporter = MetricsServer(
                    metrics.registry, settings.metrics_host, settings.metrics_port
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                    f"{exc.strerror or exc}"
                ) from exc
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, exporter.port)
        server = await create_server(
            address,
            settings.request_limits,
            settings.security,
            access_log=settings.access_log,
            request_id_in=settings.request_id_in,
            tracing=tracing,
            http_port=settings.http_port,
            grace=settings.grace_seconds,
            metrics=metrics,
            connections=settings.connections,
            jobs_dir=settings.jobs_dir,
            max_job_bytes=settings.max_job_bytes,
        )
        if server.http is not None:
            log.info("OpenAI-style HTTP on port %d (/v1/embeddings)", server.http.port)
        await _serve(server, settings, address, metrics, exporter, tracing)
    finally:
        if server is not None:
            await server.stop(None)  # at once: a drained server has nothing left
        if exporter is not None:
            exporter.close()
        if tracing is not None:
            tracing.shutdown()


async def _serve(
    server: Server,
    settings: Settings,
    address: str,
    metrics: Metrics,
    exporter: MetricsServer | None,
    tracing: Tracing | None,
) -> None:
    stop = asyncio.Event()  # from here on, SIGTERM or SIGINT stops it cleanly
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening on port %d (%s event loop); loading the model",
        server.port,
        kind_of(asyncio.get_running_loop()),
    )
    log.info("security: %r; limits: %s", settings.security, settings.request_limits)
    if tracing is not None:
        log.info("tracing: OpenTelemetry spans over OTLP/gRPC")
    host = address.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.security.tokens:
        log.warning(
            "listening on %s with no token authentication: anyone who can reach the port "
            "can call the model (see docs/operations.md)",
            host,
        )
    stopped = threading.Event()  # the load gives up at its next step once set
    loading = asyncio.ensure_future(
        asyncio.to_thread(build_core, settings, metrics, tracing, stopped)
    )
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        stopped.set()
        log.info("stopped while loading: the load ends at its next step, nothing is served")
        loading.add_done_callback(lambda f: f.cancelled() or f.exception())  # not an error
    else:
        core = _loaded(loading)
        # watched from before the first call can come
        lag = None if exporter is None else asyncio.ensure_future(metrics.watch_event_loop())
        freeze_loaded_objects()
        await server.mark_ready(core)
        log.info("serving on port %d", server.port)
        await stopping
        if lag is not None:
            lag.cancel()
    log.info("stopping (grace %.1fs)", settings.grace_seconds)
    await server.stop(settings.grace_seconds)
    log.info("stopped")


# What a configuration that cannot load raises: the message says why, no traceback needed.
_LOAD_ERRORS = (StartupError, ValueError, OSError)


def _loaded(loading: asyncio.Future[Core]) -> Core:
    """The loaded core; a start-up error when the configuration could not load."""
    exc = loading.exception()
    if exc is None:
        return loading.result()
    if isinstance(exc, _LOAD_ERRORS):
        raise StartupError(str(exc)) from exc
    raise exc  # a bug: its traceback is what a developer needs
