"""Throughput benchmarks of issue 3, side by side in one run (CPU, loopback, bounded).

    make bench      # or: .venv/bin/python bench/throughput.py [--seconds 15]

1. the ceiling: the backbone alone (bench/ceiling.py);
2. headserve Encode with 1, 8, 32 and 64 concurrent one-sentence callers, and one
   stream of 32-sentence batches (bench/load.py against `headserve serve`);
3. the naive server (bench/naive_server.py) under the same callers;
4. the mixed workload (Encode, Classify, AnswerQuestion, PredictTokens in equal shares),
   against Encode alone, on the same server and sentences, in --mixed-rounds alternating
   pairs.
Each server runs in its own process and the load generator in another. Results go to
bench/results/throughput.json and Markdown tables on stdout. The second table says, for each
headserve load, what the server's metrics (--metrics-port) and /proc saw during it: the mean
batch, how much of their time the model workers spent computing, the cores the model got and
its speed per core against the ceiling's, and the cores the rest of the server, the load
generator and the hypervisor (stolen) took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from load import metrics_url

HERE = Path(__file__).resolve().parent
PY = sys.executable
HEADSERVE = str(Path(PY).parent / "headserve")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE)}


def start(
    cmd: list[str], ready: str, log: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start a server; wait for the log line matching `ready` (its group 1 is the port).
    The lines up to it go to `log`, when given."""
    proc = subprocess.Popen(
        cmd, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None
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
            return proc, f"127.0.0.1:{found.group(1)}"
    proc.kill()
    raise TimeoutError(f"{cmd} not ready in 180 s")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def load(target: str, seconds: float, *args: str) -> dict:
    run = subprocess.run(
        [PY, str(HERE / "load.py"), target, "--seconds", str(seconds), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=seconds + 120,
        check=True,
    )
    return json.loads(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per load run")
    parser.add_argument("--callers", default="1,8,32,64")
    parser.add_argument("--serve-args", default="", help="extra `headserve serve` options")
    parser.add_argument(
        "--mixed-rounds", type=int, default=3, help="pairs of mixed and Encode-alone runs"
    )
    parser.add_argument(
        "--ceiling-args",
        default="",
        help='more bench/ceiling.py options, e.g. "--runtime onnx" (the server\'s own pass on '
        "ONNX Runtime, its default on a CPU) or --sizes",
    )
    args = parser.parse_args()
    callers = [int(c) for c in args.callers.split(",")]
    results: dict = {"seconds": args.seconds}

    ceiling = subprocess.run(
        [
            PY,
            str(HERE / "ceiling.py"),
            "--seconds",
            str(args.seconds),
            "--json",
            "/dev/stdout",
            *args.ceiling_args.split(),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
        timeout=1200,
    )
    results["ceiling"] = json.loads(ceiling.stdout[ceiling.stdout.index("{") :])

    log: list[str] = []
    server, target = start(
        [HEADSERVE, "serve", "--port", "0", "--allow-untrained", "--metrics-port", "0"]
        + args.serve_args.split(),
        r"serving on port (\d+)",
        log,
    )
    metrics = metrics_url("".join(log))
    watch = ("--server-pid", str(server.pid), "--metrics", metrics)
    try:
        results["headserve"] = [
            load(target, args.seconds, "--concurrency", str(c), *watch) for c in callers
        ]
        results["headserve_stream"] = load(target, args.seconds, "--stream-batch", "32", *watch)
        # Mixed against Encode alone in alternating pairs (order swapped each round), so
        # that a change in the machine's load between two runs shows as spread, not as effect.
        results["mixed_rounds"] = []
        for n in range(args.mixed_rounds):
            pair = {}
            for mix in ("encode", "mixed") if n % 2 == 0 else ("mixed", "encode"):
                pair[mix] = load(target, args.seconds, "--concurrency", "64", "--mix", mix, *watch)
            results["mixed_rounds"].append(pair)
    finally:
        stop(server)

    naive, target = start(
        [PY, str(HERE / "naive_server.py"), "--port", "50061"], r"listening on port (\d+)"
    )
    try:
        results["naive"] = [load(target, args.seconds, "--concurrency", str(c)) for c in callers]
    finally:
        stop(naive)

    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    print(table(results))


def table(r: dict) -> str:
    best = r["ceiling"]["best"]
    ceiling = best["sentences_s"]
    lines = [
        f"Ceiling (backbone alone, length-sorted, batch {best['batch_size']}, "
        f"{best['workers']} worker(s) x {best['threads']} torch thread(s)): "
        f"{ceiling:.1f} sentences/s, {best['tokens_s']:.0f} tokens/s",
        "",
        "| load | headserve sent/s | p50 ms | p99 ms | of ceiling | naive sent/s | naive p99 ms | headserve / naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h, n in zip(r["headserve"], r["naive"], strict=True):
        lines.append(
            f"| {h['concurrency']} callers | {h['sentences_s']:.1f} | {h['p50_ms']:.0f} | {h['p99_ms']:.0f} "
            f"| {h['sentences_s'] / ceiling:.2f} | {n['sentences_s']:.1f} | {n['p99_ms']:.0f} "
            f"| {h['sentences_s'] / n['sentences_s']:.2f}x |"
        )
    s = r["headserve_stream"]
    lines.append(
        f"| 1 stream, 32-sentence batches | {s['sentences_s']:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} "
        f"| {s['sentences_s'] / ceiling:.2f} | | | |"
    )
    lines += ["", *mixed_table(r["mixed_rounds"]), "", *cores_table(r)]
    return "\n".join(lines)


def mixed_table(rounds: list[dict]) -> list[str]:
    """Mixed (Encode, Classify, AnswerQuestion, PredictTokens in equal shares) against Encode
    alone, 64 callers, per round: in sentences/s (the target), in backbone tokens computed
    per second (the mix's rows are longer: AnswerQuestion's hold a question and a context),
    and in sentences per second per core the model got (the machine's load moves between
    runs, and takes cores from the model)."""
    if not rounds:  # --mixed-rounds 0
        return []
    lines = [
        "Mixed against Encode alone, 64 callers, alternating pairs:",
        "",
        "| round | mixed sent/s | Encode sent/s | ratio | in backbone tokens/s | "
        "per model core | machine stolen %, mixed / Encode |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for n, pair in enumerate(rounds, 1):
        m, e = pair["mixed"], pair["encode"]
        ratio = m["sentences_s"] / e["sentences_s"]
        ratios.append(ratio)
        ms, es = m["server"], e["server"]
        tokens = ms["model_tokens_s"] / es["model_tokens_s"]
        per_core = ratio * es["model_cores"] / ms["model_cores"]
        lines.append(
            f"| {n} | {m['sentences_s']:.1f} | {e['sentences_s']:.1f} | {ratio:.2f} "
            f"| {tokens:.2f} | {per_core:.2f} | {ms['steal_pct']:.0f} / {es['steal_pct']:.0f} |"
        )
    lines += ["", f"Median mixed / Encode: **{statistics.median(ratios):.2f}**"]
    return lines


def cores_table(r: dict) -> list[str]:
    """Where the two cores went during each headserve load, from the server's metrics and /proc:
    the model's speed per core it got, against the ceiling's per core it got."""
    best = r["ceiling"]["best"]
    per_core = best["sentences_s"] / best["cores"]
    lines = [
        f"Where the cores went (ceiling: {best['cores']:.2f} cores, {per_core:.1f} sentences/s per core):",
        "",
        "| load | mean batch rows | workers computing % | model cores "
        "| sent/s per model core (of ceiling's) "
        "| rest of server cores | load generator cores | machine busy / stolen % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    loads = [
        *((f"{h['concurrency']} callers", h) for h in r["headserve"]),
        ("1 stream, 32-sentence batches", r["headserve_stream"]),
        *(
            (f"mixed, 64 callers, round {n}", p["mixed"])
            for n, p in enumerate(r["mixed_rounds"], 1)
        ),
    ]
    for name, run in loads:
        u = run.get("server")
        if u is None:
            continue
        rate = run["sentences_s"] / u["model_cores"] if u["model_cores"] else float("nan")
        lines.append(
            f"| {name} | {u['mean_batch_rows']:.1f} | {u['workers_busy_pct']:.0f} "
            f"| {u['model_cores']:.2f} "
            f"| {rate:.1f} ({rate / per_core:.2f}) | {u['server_other_cores']:.2f} "
            f"| {u['generator_cores']:.2f} | {u['machine_busy_pct']:.0f} / {u['steal_pct']:.0f} |"
        )
    return lines


if __name__ == "__main__":
    main()
