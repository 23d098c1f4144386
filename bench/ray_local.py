"""headserve on a local Ray Serve, behind Serve's gRPC proxy (ray_proxy.py, ray_autoscale.py)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

APP = "headserve"  # the application's name: load.py's --application


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def local_serve() -> Iterator[int]:
    """A local Ray on every core with Serve's gRPC proxy on a free port: yields the port; shuts
    Serve and Ray down on exit. What Ray's processes read from the environment is set before."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from headserve.server.transports import ray_serve

    port = free_port()
    ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False)
    try:
        ray_serve.start(port, http_options={"port": free_port()})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(cpus: float, **options: Any) -> None:
    """The packaged model (default serve options, --allow-untrained) as the application APP,
    `cpus` per replica, up to 256 calls in progress each; `options`: more of Serve's."""
    from ray import serve

    from headserve.server.options import serve_settings
    from headserve.server.transports import ray_serve

    app = ray_serve.application(
        serve_settings(["--allow-untrained"]),
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": cpus},
        **options,
    )
    serve.run(app, name=APP, route_prefix="/headserve")
