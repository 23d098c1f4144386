"""uvicorn serving the OpenAI-style HTTP app (http.py) on the gRPC server's event loop.

    headserve serve --http-port 8080

It binds the host of the gRPC address, with the same TLS (and mutual TLS) as gRPC. The
headserve server owns SIGTERM and SIGINT (its drain), so uvicorn is kept from taking them.
Each connection is held to the `http_` limits of Connections (http_connections.py).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from ..calls.connections import Connections
from ..calls.security import Security
from ..discovery import StartupError
from ..observability.metrics import Metrics
from .http_connections import ConnectionLimits, HeadLimits, LimitedH11Protocol, connection_cap

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the headserve server's signal handlers stay in place


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        raise StartupError(f"cannot serve HTTP on {host}:{port}: {why}") from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpServer:
    """A started uvicorn server; `stop` lets its requests finish within the grace."""

    def __init__(self, server: _Uvicorn, task: asyncio.Future[None], port: int) -> None:
        self._server = server
        self._task = task
        self.port = port

    @classmethod
    async def start(
        cls,
        app: Any,
        host: str,
        port: int,
        security: Security,
        *,
        grace: float,
        connections: Connections,
        metrics: Metrics | None = None,
    ) -> HttpServer:
        refused = metrics.http_refused if metrics is not None else None

        def count(reason: str) -> None:
            if refused is not None:
                refused.labels(reason).inc()

        limits = ConnectionLimits(
            cap=connection_cap(connections.http_max_connections),
            header_timeout=connections.http_header_timeout,
            max_header_bytes=connections.http_max_header_bytes,
            refused=count,
        )
        sock = _bind(host, port)
        tls: dict[str, Any] = {}
        if security.tls_cert is not None:
            tls = dict(ssl_certfile=str(security.tls_cert), ssl_keyfile=str(security.tls_key))
            if security.tls_client_ca is not None:
                tls.update(
                    ssl_ca_certs=str(security.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED
                )
        config = uvicorn.Config(
            HeadLimits(app, connections.http_max_headers, connections.http_max_header_bytes, count),
            http=LimitedH11Protocol.bound(limits),
            timeout_keep_alive=connections.http_keepalive_timeout,  # type: ignore[arg-type]
            lifespan="off",
            access_log=False,  # the call pipeline logs each request with its id
            log_config=None,  # headserve's logging, as configured
            server_header=False,
            timeout_graceful_shutdown=max(1, math.ceil(grace)),
            **tls,
        )
        server = _Uvicorn(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():  # a TLS file it cannot read, say
                sock.close()
                exc = task.exception()
                raise StartupError(f"cannot serve HTTP on {host}:{port}: {exc}") from exc
            await asyncio.sleep(0.01)
        if metrics is not None:
            metrics.http_connections.set_function(lambda: len(server.server_state.connections))
        bound = sock.getsockname()[1]
        return cls(server, task, bound)

    async def stop(self) -> None:
        """Stop taking connections; answer what was taken (uvicorn's graceful shutdown)."""
        self._server.should_exit = True
        try:
            await self._task
        except Exception:  # already logged by uvicorn; stopping must go on
            log.exception("the HTTP server stopped with an error")
