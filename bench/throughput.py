"""Throughput benchmarks of issue 3, side by side in one run (CPU, loopback, bounded).

    make bench      # or: .venv/bin/python bench/throughput.py [--seconds 15]

1. the ceiling: the backbone alone (bench/ceiling.py);
2. headserve Encode with 1, 8, 32 and 64 concurrent one-sentence callers, one stream of
   32-sentence batches with 4 in flight, and a lone 32-sentence batch at a time (one
   stream, one batch in flight: what one caller sending batches in turn gets)
   (bench/load.py against `headserve serve`);
3. the naive server (bench/naive_server.py) under the same callers;
4. the mixed workload (Encode, Classify, AnswerQuestion, PredictTokens in equal shares),
   against Encode alone, on the same server and sentences, in --mixed-rounds alternating
   pairs;
5. with --baseline-args (e.g. "--runtime torch"): a second headserve with those options,
   Encode at 64 callers against the first, in --baseline-rounds alternating pairs.
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
import statistics
import subprocess
import sys
from pathlib import Path

from load import run_load
from report import RESULTS, markdown_head, write_json
from servers import ENV, running, served

HERE = Path(__file__).resolve().parent
STREAMS = (  # (row name, results key)
    ("1 stream, 32-sentence batches, 4 in flight", "headserve_stream"),
    ("1 stream, one 32-sentence batch at a time", "headserve_lone_batch"),
)


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
    parser.add_argument(
        "--baseline-args",
        default="",
        help="`headserve serve` options of a second server to compare at 64 callers, e.g. "
        '"--runtime torch"',
    )
    parser.add_argument("--baseline-rounds", type=int, default=3)
    args = parser.parse_args()
    callers = [int(c) for c in args.callers.split(",")]
    results: dict = {"seconds": args.seconds}

    ceiling = subprocess.run(
        [
            sys.executable,
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

    with served(args.serve_args.split(), metrics=True) as (target, watch):
        results["headserve"] = [
            run_load(target, args.seconds, "--concurrency", str(c), *watch) for c in callers
        ]
        results["headserve_stream"] = run_load(target, args.seconds, "--stream-batch", "32", *watch)
        results["headserve_lone_batch"] = run_load(
            target, args.seconds, "--stream-batch", "32", "--stream-window", "1", *watch
        )
        # Mixed against Encode alone in alternating pairs (order swapped each round), so
        # that a change in the machine's load between two runs shows as spread, not as effect.
        results["mixed_rounds"] = []
        for n in range(args.mixed_rounds):
            pair = {}
            for mix in ("encode", "mixed") if n % 2 == 0 else ("mixed", "encode"):
                pair[mix] = run_load(
                    target, args.seconds, "--concurrency", "64", "--mix", mix, *watch
                )
            results["mixed_rounds"].append(pair)

    if args.baseline_args:
        results["baseline_args"] = args.baseline_args
        results["baseline_rounds"] = baseline_rounds(args)

    naive = [sys.executable, str(HERE / "naive_server.py"), "--port", "50061"]
    with running(naive, r"listening on port (\d+)") as (_, target):
        results["naive"] = [
            run_load(target, args.seconds, "--concurrency", str(c)) for c in callers
        ]

    write_json(RESULTS / "throughput.json", results)
    print(table(results))


def baseline_rounds(args: argparse.Namespace) -> list[dict]:
    """Encode at 64 callers on this server and on one started with --baseline-args, in
    alternating pairs (both servers up, one loaded at a time)."""
    shape = ("--concurrency", "64")
    rounds = []
    with (
        served(args.serve_args.split()) as (target, _),
        served(args.baseline_args.split()) as (baseline, _),
    ):
        for n in range(args.baseline_rounds):
            pair = {}
            for side in ("headserve", "baseline") if n % 2 == 0 else ("baseline", "headserve"):
                pair[side] = run_load(
                    target if side == "headserve" else baseline, args.seconds, *shape
                )
            rounds.append(pair)
    return rounds


def table(r: dict) -> str:
    best = r["ceiling"]["best"]
    ceiling = best["sentences_s"]
    lines = [
        f"Ceiling (backbone alone, length-sorted, batch {best['batch_size']}, "
        f"{best['workers']} worker(s) x {best['threads']} torch thread(s)): "
        f"{ceiling:.1f} sentences/s, {best['tokens_s']:.0f} tokens/s",
        "",
        *markdown_head(
            "load | headserve sent/s | p50 ms | p99 ms | of ceiling | naive sent/s "
            "| naive p99 ms | headserve / naive"
        ),
    ]
    for h, n in zip(r["headserve"], r["naive"], strict=True):
        lines.append(
            f"| {h['concurrency']} callers | {h['sentences_s']:.1f} | {h['p50_ms']:.0f} | {h['p99_ms']:.0f} "
            f"| {h['sentences_s'] / ceiling:.2f} | {n['sentences_s']:.1f} | {n['p99_ms']:.0f} "
            f"| {h['sentences_s'] / n['sentences_s']:.2f}x |"
        )
    for name, key in STREAMS:
        s = r[key]
        lines.append(
            f"| {name} | {s['sentences_s']:.1f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} "
            f"| {s['sentences_s'] / ceiling:.2f} | | | |"
        )
    lines += ["", *mixed_table(r["mixed_rounds"]), *baseline_table(r), "", *cores_table(r)]
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
        *markdown_head(
            "round | mixed sent/s | Encode sent/s | ratio | in backbone tokens/s "
            "| per model core | machine stolen %, mixed / Encode"
        ),
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


def baseline_table(r: dict) -> list[str]:
    rounds = r.get("baseline_rounds")
    if not rounds:
        return []
    lines = [
        "",
        f"Encode at 64 callers against `headserve serve {r['baseline_args']}`, alternating:",
        "",
        *markdown_head("round | headserve sent/s | baseline sent/s | ratio"),
    ]
    ratios = []
    for n, pair in enumerate(rounds, 1):
        h, b = pair["headserve"]["sentences_s"], pair["baseline"]["sentences_s"]
        ratios.append(h / b)
        lines.append(f"| {n} | {h:.1f} | {b:.1f} | {h / b:.2f} |")
    return [*lines, "", f"Median headserve / baseline: **{statistics.median(ratios):.2f}**"]


def cores_table(r: dict) -> list[str]:
    """Where the two cores went during each headserve load, from the server's metrics and /proc:
    the model's speed per core it got, against the ceiling's per core it got."""
    best = r["ceiling"]["best"]
    per_core = best["sentences_s"] / best["cores"]
    lines = [
        f"Where the cores went (ceiling: {best['cores']:.2f} cores, {per_core:.1f} sentences/s per core):",
        "",
        *markdown_head(
            "load | mean batch rows | workers computing % | model cores "
            "| sent/s per model core (of ceiling's) "
            "| rest of server cores | load generator cores | machine busy / stolen %"
        ),
    ]
    loads = [
        *((f"{h['concurrency']} callers", h) for h in r["headserve"]),
        *((name, r[key]) for name, key in STREAMS),
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
