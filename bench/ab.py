"""A/B of two `headserve serve` option sets under the same load, interleaved (CPU, loopback).

    .venv/bin/python bench/ab.py --a "--event-loop asyncio" --b "--event-loop uvloop"
    .venv/bin/python bench/ab.py --a "" --b "--no-trace" --callers 64 --mix mixed --rounds 4

This machine's speed moves by 20% over minutes (other tenants), so two servers measured
one after the other differ by more than most changes do. Here each round starts server A,
runs the load (bench/load.py: --callers closed-loop callers, one sentence per call, --mix),
stops it, then does the same for B; the order alternates between rounds (AB, BA, AB...)
so a drift in either direction hits both. Reported: sentences/s, p50 and p99 of every run,
and B / A per round and over all rounds (the median of the rounds' ratios).
Everything also goes to bench/results/ab.json (--json).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from load import MIXES
from throughput import HEADSERVE, load, start, stop

HERE = Path(__file__).resolve().parent


def run_one(serve_args: str, seconds: float, callers: int, mix: str) -> dict:
    server, target = start(
        [HEADSERVE, "serve", "--port", "0", "--allow-untrained", *serve_args.split()],
        r"serving on port (\d+)",
    )
    try:
        load(target, 2.0, "--concurrency", str(callers), "--mix", mix)  # warm-up, not counted
        return load(target, seconds, "--concurrency", str(callers), "--mix", mix)
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", default="", help="`headserve serve` options of A")
    parser.add_argument("--b", required=True, help="`headserve serve` options of B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--mix", choices=MIXES, default="encode")
    parser.add_argument("--seconds", type=float, default=12.0, help="per load run")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "ab.json")
    args = parser.parse_args()
    rounds = []
    for n in range(args.rounds):
        order = ("a", "b") if n % 2 == 0 else ("b", "a")
        runs = {v: run_one(getattr(args, v), args.seconds, args.callers, args.mix) for v in order}
        rounds.append({"order": "".join(order).upper(), **runs})
    ratios = [r["b"]["sentences_s"] / r["a"]["sentences_s"] for r in rounds]
    out = {
        "a": args.a,
        "b": args.b,
        "callers": args.callers,
        "mix": args.mix,
        "seconds": args.seconds,
        "rounds": rounds,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
    }
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"A: `{args.a or '(defaults)'}`  B: `{args.b}`  {args.callers} callers, {args.mix}\n")
    print("| round | order | A sent/s (p50 / p99 ms) | B sent/s (p50 / p99 ms) | B / A |")
    print("|---|---|---|---|---|")
    for i, (r, ratio) in enumerate(zip(rounds, ratios, strict=True)):
        a, b = r["a"], r["b"]
        print(
            f"| {i + 1} | {r['order']} | {a['sentences_s']:.1f} ({a['p50_ms']:.0f} / "
            f"{a['p99_ms']:.0f}) | {b['sentences_s']:.1f} ({b['p50_ms']:.0f} / "
            f"{b['p99_ms']:.0f}) | {ratio:.2f} |"
        )
    print(f"\nB / A, median of {len(ratios)} rounds: {out['median_ratio']:.2f}")


if __name__ == "__main__":
    main()
