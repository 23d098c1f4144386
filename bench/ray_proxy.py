"""Encode through Ray Serve's gRPC proxy against the standalone server, interleaved.

    .venv/bin/python bench/ray_proxy.py [--callers 64] [--rounds 3] [--seconds 12] [--replicas 1 2]
    .venv/bin/python bench/ray_proxy.py --direct-ingress --replicas 1

Starts a local Ray (every core) with Serve's gRPC proxy and deploys the packaged model as one
application (headserve.server.transports.ray_serve, default serve options), once per replica count. Each
round then loads the standalone `headserve serve` (a subprocess) and the Ray application in
turn, alternating the order, with bench/load.py (one sentence per call, closed loop). Ray's
processes stay up (idle) while the standalone server is measured. --direct-ingress calls the
replica's own gRPC port instead of the proxy (RAY_SERVE_ENABLE_DIRECT_INGRESS=1; one
replica, whose port is the one listening from 40000 up). Reported: sentences/s, p50
and p99, Ray / standalone per round and the median; everything to bench/results/ray_proxy.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from pathlib import Path

from load import brief, run_load
from ray_local import APP, cores, deploy, local_serve
from report import RESULTS, markdown_head, write_json
from servers import served


def _direct_port(first: int = 40000, last: int = 41000) -> int:
    """The replica's direct-ingress gRPC port: Serve picks the first free one from 40000."""
    for port in range(first, last):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return port
    raise RuntimeError("no replica listens for direct ingress")


def standalone(seconds: float, callers: int) -> dict:
    with served([]) as (target, _):
        run_load(target, 2.0, "--concurrency", str(callers))  # warm-up, not counted
        return run_load(target, seconds, "--concurrency", str(callers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--direct-ingress", action="store_true", help="the replica's own port")
    parser.add_argument("--json", type=Path, default=RESULTS / "ray_proxy.json")
    args = parser.parse_args()
    if args.direct_ingress:  # before Ray starts: its processes read it
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    results = []
    with local_serve() as port:
        from ray import serve

        target = f"127.0.0.1:{port}"
        for replicas in args.replicas:
            serve.delete(APP)  # the previous count's replicas hold the CPUs it asks for
            started = time.perf_counter()
            deploy(cores() / replicas, num_replicas=replicas)
            deployed = time.perf_counter() - started
            through_ray: tuple[str, ...] = ("--concurrency", str(args.callers))
            if args.direct_ingress:
                target = f"127.0.0.1:{_direct_port()}"
            else:
                through_ray += ("--application", APP)
            run_load(target, 2.0, *through_ray)  # warm-up, not counted
            for n in range(args.rounds):
                order = ("standalone", "ray") if n % 2 == 0 else ("ray", "standalone")
                runs = {
                    side: standalone(args.seconds, args.callers)
                    if side == "standalone"
                    else run_load(target, args.seconds, *through_ray)
                    for side in order
                }
                results.append(
                    {"replicas": replicas, "order": order, "deployed_s": deployed, **runs}
                )
    write_json(args.json, {"callers": args.callers, "rounds": results})
    via = "direct ingress (the replica's own port)" if args.direct_ingress else "the proxy"
    print(f"Encode, {args.callers} callers, {cores()} cores; Ray through {via}\n")
    print(
        *markdown_head(
            "replicas | order | standalone sent/s (p50 / p99 ms) | Ray sent/s (p50 / p99 ms) "
            "| Ray / standalone"
        ),
        sep="\n",
    )
    for r in results:
        a, b = r["standalone"], r["ray"]
        print(
            f"| {r['replicas']} | {' then '.join(r['order'])} | {brief(a)} | {brief(b)} "
            f"| {b['sentences_s'] / a['sentences_s']:.2f} |"
        )
    for replicas in args.replicas:
        ratios = [
            r["ray"]["sentences_s"] / r["standalone"]["sentences_s"]
            for r in results
            if r["replicas"] == replicas
        ]
        errors = sum(r["ray"].get("errors", 0) for r in results if r["replicas"] == replicas)
        print(
            f"\n{replicas} replica(s): Ray / standalone, median of {len(ratios)} rounds: "
            f"{statistics.median(ratios):.2f}; failed calls through Ray: {errors}"
        )


if __name__ == "__main__":
    main()
