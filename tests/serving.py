"""Servers for tests: in process on its own event loop thread, or the CLI as a subprocess;
both bound to port 0."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from headserve.server.app import Server, create_server
from headserve.server.core.engine import Core
from headserve.server.core.limits import RequestLimits
from headserve.server.event_loop import default_kind, new_event_loop
from headserve.server.loading import Settings, build_core
from headserve.server.observability.tracing import Tracing
from headserve.server.tasks import TASKS, Task

T = TypeVar("T")


def on_core(core: Core, call: Callable[[], Awaitable[T]]) -> T:
    """`call()` on a fresh event loop, with the core's scheduler started for it (and stopped)."""

    async def main() -> T:
        async with core.scheduler:
            return await call()

    return asyncio.run(main())


class ServerThread:
    def __init__(
        self,
        settings: Settings | None,
        tracing: Tracing | None = None,
        *,
        load: bool = True,
        tasks: Sequence[Task] = TASKS,
    ) -> None:
        """`load=False`: serving, but NOT_SERVING until `ready` (the model still loading).
        `tasks`: what it answers (the server's table; a test's own task added)."""
        self.loop = new_event_loop(default_kind())  # the loop `headserve serve` runs on
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        limits = settings.request_limits if settings is not None else RequestLimits()
        security = settings.security if settings is not None else None
        settings_or_default = settings or Settings()
        self.tracing = tracing
        self.server: Server = self.call(
            create_server(
                "127.0.0.1:0",
                limits,
                security,
                access_log=settings_or_default.access_log,
                request_id_in=settings_or_default.request_id_in,
                tracing=tracing,
                http_port=settings_or_default.http_port,
                tasks=tasks,
                connections=settings_or_default.connections,
                jobs_dir=settings_or_default.jobs_dir,
                max_job_bytes=settings_or_default.max_job_bytes,
            )
        )
        self.target = f"127.0.0.1:{self.server.port}"
        self.core = None
        if settings is not None and load:
            self.ready(settings)

    def ready(self, settings: Settings) -> None:
        self.core = build_core(settings, self.server.pipeline.metrics, self.tracing)
        self.call(self.server.mark_ready(self.core))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@dataclass
class CliServer:
    """`headserve serve ...` as a subprocess, once its `service` reports SERVING.

    A thread reads its stderr all along: a server whose log nobody reads blocks once the pipe
    is full (an access-log line per stream message fills it within a few hundred)."""

    proc: subprocess.Popen[str]
    target: str
    log: list[str]  # its stderr lines so far
    reader: threading.Thread

    def output(self, timeout: float = 30) -> str:
        """All it wrote to stderr, once it has exited (within `timeout` seconds)."""
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=timeout)
        return "".join(self.log)


def start_cli_server(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    service: str = "",
    preexec_fn: Callable[[], None] | None = None,
    headserve: Path | None = None,
) -> CliServer:
    """`headserve serve` with `args`, once serving; `preexec_fn` runs in it before it starts
    (to lower its resource limits, say). `headserve`: the command of another install."""
    headserve = headserve or Path(sys.executable).parent / "headserve"
    proc = subprocess.Popen(
        [str(headserve), "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**(env if env is not None else os.environ), "HF_HUB_OFFLINE": "1"},
        preexec_fn=preexec_fn,
    )
    assert proc.stderr is not None
    log: list[str] = []
    port = None
    deadline = time.monotonic() + 120
    while port is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        log.append(line)
        found = re.search(r"listening on port (\d+)", line)
        port = int(found.group(1)) if found else None
    assert port is not None, "".join(log)
    target = f"127.0.0.1:{port}"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        while time.monotonic() < deadline and proc.poll() is None:
            if health.Check(request).status == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.2)
    stderr = proc.stderr
    reader = threading.Thread(target=lambda: log.extend(stderr), daemon=True)
    reader.start()
    server = CliServer(proc, target, log, reader)
    if proc.poll() is not None:
        raise AssertionError(server.output())
    return server
