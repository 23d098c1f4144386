"""Ray Serve autoscaling headserve: replicas go up under a sustained load and down after it.

    .venv/bin/python bench/ray_autoscale.py [--callers 64] [--load-seconds 40] [--after 45]

A local Ray (every core), the packaged model as one application autoscaling between 1 and
--max-replicas on calls in progress (target --target per replica, short up/down delays so
that it shows in a couple of minutes), then --callers closed-loop Encode callers for
--load-seconds (bench/load.py, in a subprocess), then quiet. Prints a timestamped line each
second: seconds since the load started, replicas RUNNING / starting / stopping, and writes
the timeline to bench/results/ray_autoscale.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ray_local import APP, cores, deploy, local_serve
from report import RESULTS, write_json

HERE = Path(__file__).resolve().parent


def _replicas(serve: object, app: str) -> dict[str, int]:
    status = serve.status()  # type: ignore[attr-defined]
    deployment = status.applications[app].deployments["headserve"]
    return {str(state): count for state, count in deployment.replica_states.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--load-seconds", type=float, default=40.0)
    parser.add_argument("--after", type=float, default=45.0, help="seconds watched after it")
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--target", type=float, default=8.0, help="target_ongoing_requests")
    parser.add_argument("--json", type=Path, default=RESULTS / "ray_autoscale.json")
    args = parser.parse_args()
    timeline = []
    with local_serve() as port:
        from ray import serve

        deploy(
            cores() / args.max_replicas,
            autoscaling_config={
                "min_replicas": 1,
                "max_replicas": args.max_replicas,
                "target_ongoing_requests": args.target,
                "upscale_delay_s": 3,
                "downscale_delay_s": 15,
                "metrics_interval_s": 1,
                "look_back_period_s": 5,
            },
        )
        load = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "load.py"),
                f"127.0.0.1:{port}",
                "--application",
                APP,
                "--concurrency",
                str(args.callers),
                "--seconds",
                str(args.load_seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        print("  t (s) | load | replicas by state")
        while time.monotonic() - started < args.load_seconds + args.after:
            loading = load.poll() is None
            states = _replicas(serve, APP)
            t = time.monotonic() - started
            timeline.append({"t": round(t, 1), "load": loading, "replicas": states})
            print(f"{t:7.1f} | {'on ' if loading else 'off'}  | {states}", flush=True)
            time.sleep(1.0)
        result = json.loads(load.communicate()[0] or "{}")
    running = [sum(v for k, v in e["replicas"].items() if "RUNNING" in k) for e in timeline]
    during = [r for r, e in zip(running, timeline, strict=True) if e["load"]]
    print(
        f"\nreplicas RUNNING: at start {running[0]}, most under load {max(during, default=0)}, "
        f"at the end {running[-1]}; load: {result.get('sentences_s', 0):.1f} sentences/s, "
        f"{result.get('errors', 0)} failed calls"
    )
    write_json(args.json, {"timeline": timeline, "load": result})


if __name__ == "__main__":
    main()
