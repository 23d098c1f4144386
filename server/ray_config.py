"""`headserve ray-config`: a Ray Serve config file from the options of `headserve serve`.

    headserve ray-config --replicas 2 --app en --max-batch-items 32 \\
        --app zh /models/chinese-bert --head topics=classify:/heads/t > serve.yaml
    serve run serve.yaml        # or: serve deploy serve.yaml, or a KubeRay RayService

Options before the first `--app` shape the replicas (how many, their resources, how many calls
one holds); after each `--app NAME` come that application's `headserve serve` options (model,
heads, limits, tokens...), checked here as `serve` would check them, and written as the
Settings they make (plain values; a token file by its path, never the tokens). Each
application is built on the replicas by `headserve.server.transports.ray_serve:build` from
those Settings, so what a user knows of `headserve serve` carries over.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .loading import settings_mapping
from .options import DefaultsShown, parser, settings_of
from .transports import ray_serve

DEFAULT_APP = "headserve"
# A replica batches the calls it holds at once, and an open stream holds one slot for its
# whole life: Serve's default of 5 ongoing requests would starve the batcher.
MAX_ONGOING_REQUESTS = 256
MAX_QUEUED_REQUESTS = 1024


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headserve ray-config",
        formatter_class=DefaultsShown,
        usage="headserve ray-config [REPLICA OPTIONS] [--app NAME [SERVE OPTIONS ...]] ...",
        description="Print a Ray Serve config (YAML) serving headserve; see docs/scaling.md.",
        epilog="--app NAME [SERVE OPTIONS ...]: an application named NAME (gRPC metadata "
        "'application: NAME' routes to it), served with these `headserve serve` options "
        "(MODEL_DIR, --head, limits, tokens...; see headserve serve --help). Repeat it for "
        "several backbones behind one proxy. Without --app: one application named "
        f"'{DEFAULT_APP}' on the default options. The options above (before the first --app) "
        "shape every application's replicas. Example: headserve ray-config --replicas 2 "
        "--app en --max-batch-items 32 --app zh /models/chinese-bert > serve.yaml",
    )
    parser.add_argument("--grpc-port", type=int, default=9000, help="Serve's gRPC proxy port")
    parser.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help="Serve's request_timeout_s: the proxy ends a call after this long, and each "
        "replica drops its rows still queued then (the proxy passes no caller deadline on)",
    )
    parser.add_argument("--replicas", type=int, default=1, help="replicas per application")
    parser.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="autoscale between MIN and MAX replicas instead of a fixed --replicas",
    )
    parser.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=64,
        help="with --autoscale: calls in progress per replica that Serve aims at",
    )
    parser.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=MAX_ONGOING_REQUESTS,
        help="calls one replica holds at once (an open stream holds one all its life)",
    )
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        default=MAX_QUEUED_REQUESTS,
        help="calls waiting for a replica; more are refused",
    )
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica")
    parser.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs per replica")
    return parser


def _split(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The replica options, then each `--app NAME` with the serve options after it."""
    head: list[str] = []
    apps: list[tuple[str, list[str]]] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--app":
            if not args:
                raise SystemExit("headserve ray-config: --app needs a name")
            apps.append((args.pop(0), []))
        elif apps:
            apps[-1][1].append(arg)
        else:
            head.append(arg)
    return head, apps or [(DEFAULT_APP, [])]


def deployment(options: argparse.Namespace) -> dict[str, Any]:
    """The `deployments:` entry of every application: replicas and their resources."""
    entry: dict[str, Any] = {
        "name": ray_serve.DEPLOYMENT,
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "ray_actor_options": {"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
    }
    if options.autoscale:
        low, _, high = options.autoscale.partition(":")
        entry["autoscaling_config"] = {
            "min_replicas": int(low),
            "max_replicas": int(high),
            "target_ongoing_requests": options.target_ongoing_requests,
        }
    else:
        entry["num_replicas"] = options.replicas
    return entry


def config(argv: Sequence[str]) -> dict[str, Any]:
    """The Serve config for `argv` (see the module's doc); each application's serve options
    are checked as `headserve serve` would check them."""
    head, apps = _split(argv)
    options = _parser().parse_args(head)
    timeout = (
        {} if options.request_timeout is None else {"request_timeout_s": options.request_timeout}
    )
    applications = []
    for name, serve_args in apps:
        parsed = parser().parse_args(["serve", *serve_args])
        if parsed.jobs_dir is not None:
            raise ValueError(
                f"application {name}: --jobs-dir is not served under Ray Serve (each replica "
                "would need a job store shared with the others): run batch jobs on a "
                "standalone `headserve serve`"
            )
        settings = settings_of(parsed)  # refuses what `headserve serve` would refuse
        if settings.security.tls_cert or settings.security.tls_key:
            raise ValueError(
                f"application {name}: Ray Serve's gRPC proxy serves no TLS; terminate TLS in "
                "the load balancer or ingress in front of it (docs/operations.md)"
            )
        args: dict[str, Any] = {
            "settings": settings_mapping(settings, parsed.auth_token_file, parsed.admin_token_file),
            **timeout,
        }
        applications.append(
            {
                "name": name,
                "route_prefix": f"/{name}",
                "import_path": f"{ray_serve.__name__}:build",
                "args": args,
                "deployments": [deployment(options)],
            }
        )
    grpc_options: dict[str, Any] = {
        "port": options.grpc_port,
        "grpc_servicer_functions": ray_serve.servicer_functions(),
    }
    if options.request_timeout is not None:
        grpc_options["request_timeout_s"] = options.request_timeout
    return {
        "proxy_location": "EveryNode",
        "grpc_options": grpc_options,
        "applications": applications,
    }


def main(argv: Sequence[str]) -> None:
    import yaml

    print(yaml.safe_dump(config(argv), sort_keys=False), end="")
