"""A/B of two `headserve serve` option sets under the same load, interleaved (CPU, loopback).

    .venv/bin/python bench/ab.py --a "--event-loop asyncio" --b "--event-loop uvloop"
    .venv/bin/python bench/ab.py --a "" --b "--no-trace" --callers 64 --mix mixed --rounds 4
    .venv/bin/python bench/ab.py --a-bin /tmp/base/.venv/bin/headserve --b "" --cpu
    .venv/bin/python bench/ab.py --b "--otlp-endpoint {otlp}" --collector --cpu

This machine's speed moves by 20% over minutes (other tenants), so two servers measured
one after the other differ by more than most changes do. Here each round starts server A,
runs the load (bench/load.py: --callers closed-loop callers, one sentence per call, --mix),
stops it, then does the same for B; the order alternates between rounds (AB, BA, AB...)
so a drift in either direction hits both. Reported: sentences/s, p50 and p99 of every run,
and B / A per round and over all rounds (the median of the rounds' ratios).
Everything also goes to bench/results/ab.json (--json).

--a-bin / --b-bin run another `headserve` executable on that side (another checkout's venv:
old code against new). --cpu also reports the server's CPU outside its model workers per
call (its /metrics and /proc, as throughput.py reads them). --collector starts a real OTLP
trace receiver (tests/otlp.py) in this process and puts its address where an option says
{otlp}: what tracing costs, with its spans really exported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from load import MIXES, brief, run_load
from report import RESULTS, markdown_head, write_json
from servers import HEADSERVE, served


def run_one(
    headserve: str,
    serve_args: str,
    seconds: float,
    callers: int,
    mix: str,
    cpu: bool,
    load_args: str = "",
) -> dict:
    shape = load_args.split() or ["--concurrency", str(callers), "--mix", mix]
    with served(serve_args.split(), metrics=cpu, headserve=headserve) as (target, watch):
        run_load(target, 2.0, *shape)  # warm-up, not counted
        result = run_load(target, seconds, *shape, *watch)
    if cpu:  # one sentence per call
        result["server_other_ms_per_call"] = (
            1e3 * result["server"]["server_other_cores"] / result["sentences_s"]
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="", help="`headserve serve` options of A")
    parser.add_argument("--b", required=True, help="`headserve serve` options of B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--mix", choices=MIXES, default="encode")
    parser.add_argument("--seconds", type=float, default=12.0, help="per load run")
    parser.add_argument("--json", type=Path, default=RESULTS / "ab.json")
    parser.add_argument("--a-bin", default=HEADSERVE, help="the `headserve` executable of A")
    parser.add_argument("--b-bin", default=HEADSERVE, help="the `headserve` executable of B")
    parser.add_argument("--cpu", action="store_true", help="also the server's CPU per call")
    parser.add_argument(
        "--collector", action="store_true", help="an OTLP trace receiver, at {otlp} in options"
    )
    parser.add_argument(
        "--load",
        default="",
        help="bench/load.py options instead of --callers/--mix, e.g. a lone stream of "
        '32-sentence batches: "--stream-batch 32 --stream-window 1"',
    )
    args = parser.parse_args()
    collector = None
    if args.collector:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from otlp import Collector

        collector = Collector()
        args.a, args.b = (o.replace("{otlp}", collector.endpoint) for o in (args.a, args.b))
    rounds = []
    for n in range(args.rounds):
        order = ("a", "b") if n % 2 == 0 else ("b", "a")
        runs = {
            v: run_one(
                getattr(args, f"{v}_bin"),
                getattr(args, v),
                args.seconds,
                args.callers,
                args.mix,
                args.cpu,
                args.load,
            )
            for v in order
        }
        rounds.append({"order": "".join(order).upper(), **runs})
    if collector is not None:
        print(f"the receiver got {len(collector.spans)} spans")
        collector.stop()
    ratios = [r["b"]["sentences_s"] / r["a"]["sentences_s"] for r in rounds]
    out = {
        "a": args.a,
        "b": args.b,
        "a_bin": args.a_bin,
        "b_bin": args.b_bin,
        "callers": args.callers,
        "mix": args.mix,
        "load": args.load,
        "seconds": args.seconds,
        "rounds": rounds,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
    }
    write_json(args.json, out)
    shape = f"load `{args.load}`" if args.load else f"{args.callers} callers, {args.mix}"
    print(f"A: `{args.a or '(defaults)'}`  B: `{args.b}`  {shape}")
    for v in ("a", "b"):
        if getattr(args, f"{v}_bin") != HEADSERVE:
            print(f"{v.upper()} runs {getattr(args, f'{v}_bin')}")
    print()
    print(
        *markdown_head("round | order | A sent/s (p50 / p99 ms) | B sent/s (p50 / p99 ms) | B / A"),
        sep="\n",
    )
    for i, (r, ratio) in enumerate(zip(rounds, ratios, strict=True)):
        print(f"| {i + 1} | {r['order']} | {brief(r['a'])} | {brief(r['b'])} | {ratio:.2f} |")
    print(f"\nB / A, median of {len(ratios)} rounds: {out['median_ratio']:.2f}")
    if args.cpu:
        for v in ("a", "b"):
            per_call = [r[v]["server_other_ms_per_call"] for r in rounds]
            shown = ", ".join(f"{x:.2f}" for x in per_call)
            print(f"{v.upper()}: server CPU outside the model per call, ms: {shown}")


if __name__ == "__main__":
    main()
