"""Soak: the mixed workload at 70% of capacity for ten minutes (CPU, loopback).

    .venv/bin/python bench/soak.py                          # 10 minutes
    .venv/bin/python bench/soak.py --minutes 0.5 --window-seconds 10 --capacity-seconds 5

One `headserve serve --allow-untrained` on the packaged default model (Encode, the packaged
`sentiment` classifier, and the untrained mlm and qa heads, so all four tasks answer), and
this process as the load generator (raw gRPC stubs from bench/load.py: no retries, a
deadline on every call):

1. capacity: --capacity-callers closed-loop callers of the mix (Encode, Classify,
   AnswerQuestion, PredictTokens in equal shares, one VADER sentence per call);
2. soak: the same mix sent open loop (on a fixed schedule, whatever the replies) at --load
   (0.7) x capacity for --minutes, with at most --max-outstanding calls unanswered.
The server's VmRSS (/proc/PID/status) every --rss-every (5) s, with CPU use per window: the
server's, and the machine's busy and stolen time (stolen: this VM's CPUs were ready but the
hypervisor ran something else; /proc/stat). VmRSS: the value after the warm-up
(the first minute, or a quarter of a shorter run), the max, the end, and the growth from
the first to the last; errors by status code; calls/s and p50/p99 per window (a minute).
A Markdown table goes to stdout, everything to bench/results/soak.json (--json), the server
log beside it.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import grpc
from data import sentences
from load import (
    Call,
    RssSampler,
    by_code,
    calls,
    closed_loop,
    cpu_between,
    open_loop,
    percentile,
    run_recorded,
)
from report import RESULTS, markdown_head

SLOW_MS = 1000.0  # a 5 s step with a p99 over this is listed with its stolen time
RPCS = ["Encode", "Classify", "AnswerQuestion", "PredictTokens"]  # the order of calls(, "mixed")


def latency(calls_: list[Call]) -> dict[str, float]:
    ms = [c.ms for c in calls_ if c.code == "OK"]
    return {"ok": len(ms), "p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99)}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def rss_at(samples: list[tuple[float, int]], t: float) -> float:
    """MiB of the last sample taken at or before `t` (the first one if none)."""
    before = [kib for when, kib in samples if when <= t]
    return (before[-1] if before else samples[0][1]) / 1024


async def measure(args: argparse.Namespace, target: str, sampler: RssSampler) -> dict[str, Any]:
    texts = sentences(args.sentences)
    result: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        rpcs = calls(channel, "mixed", args.call_timeout)
        for rpc in rpcs:
            await rpc(texts[0])  # every head answers before anything is timed
        await closed_loop(rpcs, texts, args.capacity_callers, 2.0)  # warm-up, not counted

        started = time.perf_counter()
        capacity = await closed_loop(rpcs, texts, args.capacity_callers, args.capacity_seconds)
        elapsed = time.perf_counter() - started
        ok = sum(c.code == "OK" for c in capacity.calls)
        result["capacity"] = {
            "callers": args.capacity_callers,
            "seconds": elapsed,
            "calls_s": ok / elapsed,
            **latency(capacity.calls),
            "codes": by_code(capacity.calls),
        }

        rate = args.load * ok / elapsed
        soak = await open_loop(
            rpcs,
            texts,
            rate,
            args.minutes * 60,
            max_outstanding=args.max_outstanding,
            drain_timeout=args.call_timeout + 2,
        )
        drained = time.perf_counter()

    t0, seconds = soak.started, soak.dispatch_seconds
    done = soak.recorder.calls
    window = args.window_seconds
    samples = [(t, kib) for t, kib in sampler.samples if t0 <= t <= drained]
    if not samples:
        raise RuntimeError("no VmRSS samples during the soak")
    warmup = min(args.warmup_seconds, seconds / 4)
    warm_mib = rss_at(samples, t0 + warmup)
    end_mib = rss_at(samples, t0 + seconds)
    max_mib = max(kib for _, kib in samples) / 1024
    rows = []
    for w in range(max(1, round(seconds / window))):
        lo, hi = t0 + w * window, min(t0 + (w + 1) * window, t0 + seconds)
        if hi <= lo:
            break
        sent = [c for c in done if lo <= c.sent < hi]
        codes = by_code(sent)
        rows.append(
            {
                "t_s": w * window,
                "sent_s": len(sent) / (hi - lo),
                "ok_s": codes.get("OK", 0) / (hi - lo),
                **latency(sent),
                "errors": {k: v for k, v in codes.items() if k != "OK"},
                "rss_mib": rss_at(samples, hi),
                **cpu_between(sampler.cpu, lo, hi),
            }
        )
    codes = by_code(done)
    result["soak"] = {
        "load": args.load,
        "target_rate": rate,
        "offered_rate": soak.offered_rate,
        "seconds": seconds,
        **soak.sending(),
        "ok_s": codes.get("OK", 0) / seconds,
        **latency(done),
        "codes": codes,
        "errors": sum(v for k, v in codes.items() if k != "OK"),
        "messages": soak.recorder.messages,
        "per_rpc": {name: latency([c for c in done if c.rpc == i]) for i, name in enumerate(RPCS)},
        "windows": rows,
        "spells": spells(done, sampler, t0, t0 + seconds),
    }
    result["rss"] = {
        "every_s": sampler.every,
        "warmup_s": warmup,
        "after_warmup_mib": warm_mib,
        "max_mib": max_mib,
        "end_mib": end_mib,
        "growth_pct": 100 * (end_mib / warm_mib - 1),
        "samples": [(round(t - t0, 1), round(kib / 1024, 1)) for t, kib in samples],
    }
    return result


def spells(done: list[Call], sampler: RssSampler, start: float, end: float) -> dict[str, Any]:
    """The soak in the CPU sampler's steps (--rss-every s): every step with an error or a p99
    over SLOW_MS, with the machine's stolen time in it, and the stolen time of all steps."""
    steps = []
    inside = [s for s in sampler.cpu if start <= s[0] <= end]
    for a, b in itertools.pairwise(inside):
        sent = [c for c in done if a[0] <= c.sent < b[0]]
        steps.append(
            {
                "t_s": round(a[0] - start, 1),
                "errors": sum(c.code != "OK" for c in sent),
                "p99_ms": latency(sent)["p99_ms"],
                **cpu_between([a, b], a[0], b[0]),
            }
        )
    stolen = [x["steal_pct"] for x in steps]
    bad = [x for x in steps if x["errors"] or x["p99_ms"] > SLOW_MS]
    return {
        "step_s": sampler.every,
        "slow_ms": SLOW_MS,
        "steal_pct_p50": percentile(stolen, 0.5),
        "steal_pct_p90": percentile(stolen, 0.9),
        "steal_pct_max": max(stolen, default=None),
        "bad_steps": bad,
    }


def table(r: dict[str, Any]) -> str:
    c, s, m = r["capacity"], r["soak"], r["rss"]
    errors = {k: v for k, v in s["codes"].items() if k != "OK"}
    return "\n".join(
        [
            f"Command: `{r['command']}`",
            "",
            *markdown_head("measure | value"),
            f"| capacity ({c['callers']} closed-loop callers of the mix, {c['seconds']:.1f} s) "
            f"| {c['calls_s']:.1f} calls/s, p50 {c['p50_ms']:.0f} ms, p99 {c['p99_ms']:.0f} ms |",
            f"| soak: target {s['load']:g}x capacity | {s['target_rate']:.1f} calls/s for "
            f"{s['seconds'] / 60:.1f} min |",
            f"| soak: offered (really sent) | {s['offered_rate']:.1f} calls/s, {s['sent']} calls; "
            f"{s['skipped_max_outstanding']} skipped at {s['max_outstanding']} outstanding; send "
            f"lag p50 {s['send_lag_p50_ms']:.1f} / p99 {s['send_lag_p99_ms']:.1f} ms |",
            f"| soak: answered | {s['ok_s']:.1f} calls/s; p50 {s['p50_ms']:.0f} ms, p99 "
            f"{s['p99_ms']:.0f} ms |",
            "| per RPC, p50 / p99 ms | "
            + "; ".join(
                f"{name} {x['p50_ms']:.0f} / {x['p99_ms']:.0f}" for name, x in s["per_rpc"].items()
            )
            + " |",
            f"| errors by code | {errors or 'none'}; unfinished {s['unfinished']} |",
            f"| server VmRSS after warm-up ({m['warmup_s']:.0f} s) / max / end | "
            f"{m['after_warmup_mib']:.1f} / {m['max_mib']:.1f} / {m['end_mib']:.1f} MiB "
            f"(growth {m['growth_pct']:+.1f}%) |",
            "",
            *markdown_head(
                "from s | sent/s | answered/s | p50 ms | p99 ms | errors | VmRSS MiB at the end "
                "| server CPU % of a core | machine busy / stolen %"
            ),
            *(
                f"| {w['t_s']:g} | {w['sent_s']:.1f} | {w['ok_s']:.1f} | {w['p50_ms']:.0f} "
                f"| {w['p99_ms']:.0f} | {w['errors'] or 'none'} | {w['rss_mib']:.1f} "
                f"| {pct(w['server_pct'])} | {pct(w['machine_busy_pct'])} / "
                f"{pct(w['steal_pct'])} |"
                for w in s["windows"]
            ),
            "",
            f"Every {s['spells']['step_s']:g} s step with an error or a p99 over "
            f"{SLOW_MS:.0f} ms; stolen time over all steps p50 / p90 / max "
            f"{pct(s['spells']['steal_pct_p50'])} / {pct(s['spells']['steal_pct_p90'])} / "
            f"{pct(s['spells']['steal_pct_max'])} %:",
            "",
            *markdown_head(
                "from s | errors | p99 ms | server CPU % of a core | machine busy / stolen %"
            ),
            *(
                [
                    f"| {x['t_s']:g} | {x['errors']} | {x['p99_ms']:.0f} | {pct(x['server_pct'])} "
                    f"| {pct(x['machine_busy_pct'])} / {pct(x['steal_pct'])} |"
                    for x in s["spells"]["bad_steps"]
                ]
                or ["| none | | | | |"]
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of capacity")
    parser.add_argument("--capacity-callers", type=int, default=64)
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--window-seconds", type=float, default=60.0, help="per-row window")
    parser.add_argument("--warmup-seconds", type=float, default=60.0, help="VmRSS growth base")
    parser.add_argument("--rss-every", type=float, default=5.0, help="VmRSS sample period, s")
    parser.add_argument("--max-outstanding", type=int, default=1024)
    parser.add_argument("--call-timeout", type=float, default=30.0, help="every call's deadline")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--serve-args", default="", help="extra `headserve serve` options")
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    serve_args = ["--allow-untrained", *args.serve_args.split()]
    run_recorded(
        "bench/soak.py",
        serve_args,
        args.json,
        args.rss_every,
        lambda target, pid, sampler: measure(args, target, sampler),
        table,
    )


if __name__ == "__main__":
    main()
