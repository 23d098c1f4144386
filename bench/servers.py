"""The servers benchmarks measure, each in a process of its own: started, waited for, stopped.

`running` and `served` read the server's output through a pipe until it says it is ready
(throughput.py, ab.py, ray_proxy.py); `headserve_server` logs to a file and waits until health
says SERVING (the scripts that keep the log, or drive the load from their own process).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

HEADSERVE = str(Path(sys.executable).parent / "headserve")
# for `running` and load.py's subprocess: offline, and bench/ importable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent)}


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM; SIGKILL if it is still running 30 s later."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running(
    cmd: list[str], ready: str, log: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start a server; once it logs a line matching `ready` (its group 1 is the port), yield
    (process, "127.0.0.1:PORT"). The lines up to it go to `log`, when given. `stop` on exit."""
    proc = subprocess.Popen(
        cmd, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd} exited before it was ready")
            if log is not None:
                log.append(line)
            found = re.search(ready, line)
            if found:  # keep draining the log so the server never blocks on a full pipe
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                yield proc, f"127.0.0.1:{found.group(1)}"
                return
        raise TimeoutError(f"{cmd} not ready in 180 s")
    finally:
        stop(proc)


@contextlib.contextmanager
def served(
    serve_args: Sequence[str],
    *,
    metrics: bool = False,
    headserve: str = HEADSERVE,
    log: list[str] | None = None,
) -> Iterator[tuple[str, tuple[str, ...]]]:
    """`headserve serve --port 0 --allow-untrained [--metrics-port 0] SERVE_ARGS`, `running`
    until it logs "serving on port N": yields its target and, with `metrics`, the load.py
    options that watch it (--server-pid, --metrics; empty without). Its log lines up to
    then go to `log`, when given."""
    log = log if log is not None else []
    command = [headserve, "serve", "--port", "0", "--allow-untrained"]
    command += [*(["--metrics-port", "0"] if metrics else []), *serve_args]
    with running(command, r"serving on port (\d+)", log) as (proc, target):
        watch: tuple[str, ...] = ()
        if metrics:
            watch = ("--server-pid", str(proc.pid), "--metrics", metrics_url("".join(log)))
        yield target, watch


@contextlib.contextmanager
def headserve_server(
    args: Sequence[str],
    log_path: Path,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
    serving: bool = True,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`headserve serve --port 0 ARGS`, its log in `log_path`: (process, "127.0.0.1:PORT")
    once the "listening on port N" line is logged and, with `serving`, health says SERVING (on
    a channel of its own, closed before); `stop` on exit. `env`: the server's whole
    environment (default: this one, offline)."""
    import grpc

    if env is None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [HEADSERVE, "serve", "--port", "0", *args], stdout=log, stderr=log, env=env
        )
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            found = re.search(r"listening on port (\d+)", log_path.read_text(errors="replace"))
            if found:
                port = int(found.group(1))
            elif proc.poll() is not None:
                raise RuntimeError(f"headserve serve exited:\n{log_path.read_text()}")
            elif time.monotonic() > deadline:
                raise TimeoutError("headserve serve logged no port in time")
            else:
                time.sleep(0.1)
        target = f"127.0.0.1:{port}"
        if serving:
            with grpc.insecure_channel(target) as channel:
                wait_serving(channel, proc, log_path, deadline)
        yield proc, target
    finally:
        stop(proc)


def wait_serving(
    channel: Any, proc: subprocess.Popen[Any], log_path: Path, deadline: float
) -> None:
    """Until health on `channel` says SERVING (`headserve_server`'s wait, for a caller that
    keeps to one connection): RuntimeError if the server exits or `deadline` passes first."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != serving:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"headserve serve never SERVING:\n{log_path.read_text()}")
        time.sleep(0.2)


def metrics_url(server_log: str) -> str:
    """The /metrics URL a `headserve serve --metrics-port` logged."""
    (url,) = re.findall(r"metrics on (\S+)", server_log)
    return url


def log_problems(log_path: Path, limit: int = 10) -> dict[str, object]:
    """Lines of a server log at WARNING or above, or with a traceback: a count and the first few."""
    lines = log_path.read_text(errors="replace").splitlines()
    bad = [line for line in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback", line)]
    return {"count": len(bad), "first": bad[:limit]}
