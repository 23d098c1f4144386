"""Overload: a burst at ten times the sustainable rate against a bounded queue (CPU, loopback).

    .venv/bin/python bench/overload.py                      # 10 s burst at 10x, queue of 256
    .venv/bin/python bench/overload.py --seconds 4 --sustain-seconds 4 --recovery-seconds 8

One `headserve serve --max-queue-items 256` on the packaged default model, and this process
as the load generator (raw gRPC stubs from bench/load.py: no client retries, so every
RESOURCE_EXHAUSTED is seen; a deadline of --call-timeout (30) s on every call):

1. sustainable rate: --callers (32) closed-loop callers, one VADER sentence per Encode call;
2. burst: --factor (10) x that rate, open loop (call n sent at n / rate s whatever the
   replies) for --seconds (10), with at most --max-outstanding (4096) calls unanswered: a call
   due beyond that is skipped and counted, and the rate reported as offered is the one really
   sent. Recorded: every call's status code and latency (refused = RESOURCE_EXHAUSTED,
   accepted = OK, anything else listed apart), accepted calls' p99 in each half of the
   burst and where their time went (the reply's Timing: the server's queue, the model, and
   the rest: gRPC, both event loops, tokenizing), per-second rows, CPU use of the server and
   of this generator, and how late this generator's event loop ran;
3. recovery: from the moment the burst stops sending, --callers closed-loop callers again (a
   refused caller waits 50 ms); p50 per 200 ms window (by send time) and the time until it is
   back within 1.5x of the pre-burst p50 for two windows in a row.
The server's VmRSS (/proc/PID/status) is sampled every 100 ms: start (the median over the
--idle-seconds before the burst), max, end (the median over the last second of the
--idle-seconds after the recovery). --bursts N repeats 2-3 to tell a high-water mark from
growth. A Markdown table goes to stdout, everything to bench/results/overload.json (--json),
the server log beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import threading
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
    cpu_seconds,
    machine_ticks,
    open_loop,
    percentile,
    run_recorded,
    scrape,
)
from report import RESULTS, markdown_head
from servers import metrics_url

WINDOW_S = 0.2
RECOVERED_WITHIN = 1.5


def machine_busy() -> tuple[int, int]:
    """(busy, total) ticks of the whole machine; time stolen by the hypervisor counts busy."""
    busy, stolen, total = machine_ticks()
    return busy + stolen, total


class Cpu:
    """CPU use over an interval: the server, its main thread (the event loop), this process,
    and the whole machine, each in % of one core."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.wall = time.perf_counter()
        self.server = cpu_seconds(pid)
        self.server_main = cpu_seconds(pid, pid)
        self.generator = time.process_time()
        self.busy, self.total = machine_busy()

    def since(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        busy, total = machine_busy()
        cores = os.cpu_count() or 1
        return {
            "server_pct": 100 * (cpu_seconds(self.pid) - self.server) / wall,
            "server_main_thread_pct": 100
            * (cpu_seconds(self.pid, self.pid) - self.server_main)
            / wall,
            "generator_pct": 100 * (time.process_time() - self.generator) / wall,
            "machine_pct": 100 * cores * (busy - self.busy) / max(1, total - self.total),
            "cores": cores,
        }


async def loop_lag(samples: list[float], every: float = 0.01) -> None:
    """How late this event loop wakes from a sleep of `every` s, in ms, until cancelled."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(every)
        samples.append((time.perf_counter() - before - every) * 1e3)


def ms_stats(calls_: list[Call]) -> dict[str, float]:
    ms = [c.ms for c in calls_]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms, default=float("nan")),
    }


def split(calls_: list[Call]) -> dict[str, float]:
    """p50/p99 of where accepted calls' time went: the server's queue, the model, the rest."""
    parts = {
        "queue": [c.queue_ms for c in calls_],
        "inference": [c.inference_ms for c in calls_],
        "outside": [c.outside_ms for c in calls_],
    }
    return {
        f"{name}_{q}": percentile(values, p)
        for name, values in parts.items()
        for q, p in (("p50", 0.5), ("p99", 0.99))
    }


def windows(calls_: list[Call], start: float, end: float) -> list[dict[str, Any]]:
    """Per WINDOW_S window of send time from `start`: calls sent, accepted, p50 of accepted."""
    out = []
    count = max(1, round((end - start) / WINDOW_S))
    for w in range(count):
        lo, hi = start + w * WINDOW_S, start + (w + 1) * WINDOW_S
        sent = [c for c in calls_ if lo <= c.sent < hi]
        ok = [c.ms for c in sent if c.code == "OK"]
        out.append(
            {
                "t_s": round(w * WINDOW_S, 3),
                "sent": len(sent),
                "ok": len(ok),
                "refused": sum(c.code == "RESOURCE_EXHAUSTED" for c in sent),
                "p50_ms": percentile(ok, 0.5),
            }
        )
    return out


def burst_windows(calls_: list[Call], start: float, seconds: float) -> list[dict[str, Any]]:
    """Per second of the burst (by send time): offered, accepted and refused calls/s, and the
    p50/p99 latency of each."""
    out = []
    for w in range(max(1, round(seconds))):
        lo, hi = start + w, min(start + w + 1, start + seconds)
        sent = [c for c in calls_ if lo <= c.sent < hi]
        ok = [c.ms for c in sent if c.code == "OK"]
        no = [c.ms for c in sent if c.code == "RESOURCE_EXHAUSTED"]
        span = max(hi - lo, 1e-9)
        out.append(
            {
                "t_s": w,
                "sent_s": len(sent) / span,
                "ok_s": len(ok) / span,
                "refused_s": len(no) / span,
                "ok_p50_ms": percentile(ok, 0.5),
                "ok_p99_ms": percentile(ok, 0.99),
                "refused_p50_ms": percentile(no, 0.5),
                "refused_p99_ms": percentile(no, 0.99),
            }
        )
    return out


class LoopLagScraper(threading.Thread):
    """The server's event-loop lag histogram (serve --metrics-port), scraped every second."""

    NAME = "headserve_event_loop_lag_seconds_bucket"

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.scrapes: list[tuple[float, dict[float, float]]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            buckets = {
                float(s.labels["le"]): s.value for s in scrape(self.url, 5) if s.name == self.NAME
            }
            self.scrapes.append((time.perf_counter(), buckets))
            self._stop_event.wait(1.0)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def per_second(self, start: float) -> list[dict[str, Any]]:
        """Between consecutive scrapes: lag samples, the bucket bounds holding the p99 and the
        max (ms), and the share of samples over 20 ms."""
        out = []
        for (t0, a), (_, b) in itertools.pairwise(self.scrapes):
            delta = {le: b[le] - a.get(le, 0.0) for le in sorted(b)}
            total = delta.get(float("inf"), 0.0)
            if total <= 0:
                continue
            p99 = next(le for le, n in delta.items() if n >= 0.99 * total)
            top = next(le for le, n in delta.items() if n >= total)
            over = total - delta.get(0.02, 0.0)
            out.append(
                {
                    "t_s": round(t0 - start, 1),
                    "samples": total,
                    "p99_le_ms": p99 * 1e3,
                    "max_le_ms": top * 1e3,
                    "over_20ms_pct": 100 * over / total,
                }
            )
        return out


def recovery_time(rows: list[dict[str, Any]], limit_ms: float) -> float | None:
    """End of the first window, in s from the burst's end, from which two windows in a row have
    a p50 within `limit_ms` (None: never)."""
    good = [r["ok"] > 0 and r["p50_ms"] <= limit_ms for r in rows]
    for i in range(len(rows) - 1):
        if good[i] and good[i + 1]:
            return rows[i]["t_s"] + WINDOW_S
    return None


async def burst_and_recovery(
    args: argparse.Namespace,
    pid: int,
    texts: list[str],
    burst_rpcs: list[Any],
    closed: list[Any],
    rate: float,
    pre_p50: float,
) -> dict[str, Any]:
    """2. the burst, open loop; 3. recovery, from the moment the burst stops sending."""
    lag: list[float] = []
    lag_task = asyncio.ensure_future(loop_lag(lag))
    # run_recorded writes the server's log beside the JSON
    server_lag = LoopLagScraper(
        metrics_url(args.json.with_suffix(".server.log").read_text(errors="replace"))
    )
    server_lag.start()
    cpu = Cpu(pid)
    dispatched = asyncio.Event()
    burst_task = asyncio.ensure_future(
        open_loop(
            burst_rpcs,
            texts,
            args.factor * rate,
            args.seconds,
            max_outstanding=args.max_outstanding,
            drain_timeout=args.call_timeout + 2,
            dispatched=dispatched,
        )
    )
    await dispatched.wait()
    burst_end = time.perf_counter()
    burst_cpu = cpu.since()
    lag_task.cancel()
    server_lag.stop()
    recovery = await closed_loop(
        closed, texts, args.callers, args.recovery_seconds, pause_after_error=0.05
    )
    recovery_end = time.perf_counter()
    burst = await burst_task

    b0 = burst.started
    sent = burst.recorder.calls
    ok = [c for c in sent if c.code == "OK"]
    refused = [c for c in sent if c.code == "RESOURCE_EXHAUSTED"]
    half = b0 + burst.dispatch_seconds / 2
    rows = windows(recovery.calls, burst_end, recovery_end)
    limit = RECOVERED_WITHIN * pre_p50
    back = recovery_time(rows, limit)
    return {
        "started": b0,
        "ended": burst_end,
        "recovery_ended": recovery_end,
        "burst": {
            "factor": args.factor,
            "target_rate": burst.rate,
            "offered_rate": burst.offered_rate,
            "seconds": burst.dispatch_seconds,
            "wanted": burst.wanted,
            **burst.sending(),
            "codes": by_code(sent),
            "messages": burst.recorder.messages,
            "debug": burst.recorder.debug,
            "latency_by_code": {
                code: ms_stats([c for c in sent if c.code == code]) for code in by_code(sent)
            },
            "accepted": ms_stats(ok),
            "accepted_split_ms": split(ok),
            "accepted_first_half": ms_stats([c for c in ok if c.sent < half]),
            "accepted_second_half": ms_stats([c for c in ok if c.sent >= half]),
            "accepted_s": len(ok) / burst.dispatch_seconds,
            "refused": ms_stats(refused),
            "refused_first_half": ms_stats([c for c in refused if c.sent < half]),
            "refused_second_half": ms_stats([c for c in refused if c.sent >= half]),
            "last_answer_after_end_s": max((c.done for c in sent), default=burst_end) - burst_end,
            "per_second": burst_windows(sent, b0, burst.dispatch_seconds),
            "cpu": burst_cpu,
            "server_loop_lag_per_second": server_lag.per_second(burst.started),
            "generator_loop_lag_ms": {
                "p50": percentile(lag, 0.5),
                "p99": percentile(lag, 0.99),
                "max": max(lag, default=float("nan")),
            },
        },
        "recovery": {
            "callers": args.callers,
            "pre_burst_p50_ms": pre_p50,
            "limit_ms": limit,
            "recovered_after_s": back,
            "windows_over_limit_after_recovery": (
                None
                if back is None
                else sum(r["ok"] == 0 or r["p50_ms"] > limit for r in rows if r["t_s"] >= back)
            ),
            "codes": by_code(recovery.calls),
            "messages": recovery.messages,
            "debug": recovery.debug,
            "windows": rows,
        },
    }


def renice_threads(nice: int) -> None:
    """Every thread of this process (Linux sets nice per thread) `nice` below the server's
    event loop: the generator then stands in for callers on other machines, which do not
    take the server's cores. The server, started before, keeps its own priority."""
    for tid in os.listdir("/proc/self/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), nice)


async def measure(
    args: argparse.Namespace, target: str, pid: int, sampler: RssSampler
) -> dict[str, Any]:
    texts = sentences(args.sentences)
    result: dict[str, Any] = {}
    async with (
        grpc.aio.insecure_channel(target) as closed_channel,
        grpc.aio.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as burst_channel,
    ):
        closed = calls(closed_channel, "encode", args.call_timeout)
        burst_rpcs = calls(burst_channel, "encode", args.call_timeout)
        await closed[0](texts[0])
        await burst_rpcs[0](texts[1])  # both connections up before anything is timed
        await closed_loop(closed, texts, args.callers, 2.0)  # warm-up, not counted
        if args.generator_nice:
            renice_threads(args.generator_nice)
        result["generator_nice"] = args.generator_nice

        # 1. the sustainable rate
        started = time.perf_counter()
        base = await closed_loop(closed, texts, args.callers, args.sustain_seconds)
        elapsed = time.perf_counter() - started
        base_ok = [c for c in base.calls if c.code == "OK"]
        rate = len(base_ok) / elapsed
        result["sustainable"] = {
            "callers": args.callers,
            "seconds": elapsed,
            "sentences_s": rate,
            **ms_stats(base_ok),
            "codes": by_code(base.calls),
        }

        await asyncio.sleep(args.idle_seconds)  # the memory before the burst
        rounds = []
        for _ in range(args.bursts):
            one = await burst_and_recovery(
                args, pid, texts, burst_rpcs, closed, rate, result["sustainable"]["p50_ms"]
            )
            await asyncio.sleep(args.idle_seconds)  # the memory after
            one["settled"] = time.perf_counter()
            rounds.append(one)

    def median_mib(start: float, end: float) -> float:
        values = sampler.between(start, end)
        return statistics.median(values) / 1024 if values else float("nan")

    first, last = rounds[0], rounds[-1]
    b0 = first["started"]
    start_mib = median_mib(b0 - args.idle_seconds, b0)
    end_mib = median_mib(last["settled"] - min(1.0, args.idle_seconds), last["settled"])
    max_mib = max(sampler.between(b0, last["settled"]), default=float("nan")) / 1024
    result["burst"], result["recovery"] = first["burst"], first["recovery"]
    result["bursts"] = [
        {
            "offered_rate": r["burst"]["offered_rate"],
            "codes": r["burst"]["codes"],
            "refused_p99_ms": r["burst"]["refused"]["p99_ms"],
            "accepted_p99_ms": r["burst"]["accepted"]["p99_ms"],
            "recovered_after_s": r["recovery"]["recovered_after_s"],
            "rss_max_mib": max(sampler.between(r["started"], r["settled"]), default=float("nan"))
            / 1024,
            "rss_after_mib": median_mib(r["settled"] - min(1.0, args.idle_seconds), r["settled"]),
        }
        for r in rounds
    ]
    result["rss"] = {
        "every_s": sampler.every,
        "start_mib": start_mib,
        "max_mib": max_mib,
        "end_mib": end_mib,
        "growth_pct": 100 * (end_mib / start_mib - 1),
        "max_growth_pct": 100 * (max_mib / start_mib - 1),
        "samples": [
            (round(t - b0, 2), round(kib / 1024, 1))
            for t, kib in sampler.samples
            if b0 - args.idle_seconds <= t <= last["settled"]
        ],
    }
    return result


def seconds_or_never(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def table(r: dict[str, Any]) -> str:
    s, b, rec, m = r["sustainable"], r["burst"], r["recovery"], r["rss"]
    codes = ", ".join(f"{k} {v}" for k, v in b["codes"].items())
    others = {k: v for k, v in b["codes"].items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
    back = rec["recovered_after_s"]
    return "\n".join(
        [
            f"Command: `{r['command']}`",
            "",
            *markdown_head("measure | value"),
            f"| sustainable rate ({s['callers']} closed-loop callers, {s['seconds']:.1f} s) "
            f"| {s['sentences_s']:.1f} sent/s, p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms |",
            f"| burst: target {b['factor']:g}x | {b['target_rate']:.0f} calls/s for "
            f"{b['seconds']:.1f} s |",
            f"| burst: offered (really sent) | {b['offered_rate']:.0f} calls/s "
            f"({b['offered_rate'] / s['sentences_s']:.1f}x), {b['sent']} calls; "
            f"{b['skipped_max_outstanding']} skipped at {b['max_outstanding']} outstanding; "
            f"send lag p50 {b['send_lag_p50_ms']:.1f} / p99 {b['send_lag_p99_ms']:.1f} ms |",
            f"| load generator's nice (the server's event loop: 0) | {r.get('generator_nice', 0)} |",
            f"| burst: outcomes | {codes}; unfinished {b['unfinished']} |",
            "| other status codes | "
            + (
                "; ".join(
                    f"{k} {v} (latency p50 {b['latency_by_code'][k]['p50_ms']:.0f}, max "
                    f"{b['latency_by_code'][k]['max_ms']:.0f} ms)"
                    for k, v in others.items()
                )
                or "none"
            )
            + " |",
            f"| refused: latency p50 / p99 / max | {b['refused']['p50_ms']:.1f} / "
            f"{b['refused']['p99_ms']:.1f} / {b['refused']['max_ms']:.1f} ms |",
            f"| accepted: latency p50 / p99 | {b['accepted']['p50_ms']:.0f} / "
            f"{b['accepted']['p99_ms']:.0f} ms ({b['accepted_s']:.1f} accepted/s) |",
            f"| accepted: where the time went, p50 / p99 | server queue "
            f"{b['accepted_split_ms']['queue_p50']:.0f} / {b['accepted_split_ms']['queue_p99']:.0f}"
            f" ms; model {b['accepted_split_ms']['inference_p50']:.0f} / "
            f"{b['accepted_split_ms']['inference_p99']:.0f} ms; outside both (gRPC, event loops, "
            f"tokenizing) {b['accepted_split_ms']['outside_p50']:.0f} / "
            f"{b['accepted_split_ms']['outside_p99']:.0f} ms |",
            f"| accepted: p99, first half / second half | "
            f"{b['accepted_first_half']['p99_ms']:.0f} / "
            f"{b['accepted_second_half']['p99_ms']:.0f} ms |",
            f"| server VmRSS start / max / end | {m['start_mib']:.1f} / {m['max_mib']:.1f} / "
            f"{m['end_mib']:.1f} MiB (end {m['growth_pct']:+.1f}%, max {m['max_growth_pct']:+.1f}%) |",
            f"| CPU during the burst, % of one core | server {b['cpu']['server_pct']:.0f} (its "
            f"main thread {b['cpu']['server_main_thread_pct']:.0f}), generator "
            f"{b['cpu']['generator_pct']:.0f}, whole machine {b['cpu']['machine_pct']:.0f} of "
            f"{100 * b['cpu']['cores']} |",
            f"| generator event-loop lag p50 / p99 / max | "
            f"{b['generator_loop_lag_ms']['p50']:.1f} / {b['generator_loop_lag_ms']['p99']:.1f} / "
            f"{b['generator_loop_lag_ms']['max']:.1f} ms |",
            f"| last burst call answered | {b['last_answer_after_end_s']:.2f} s after the burst |",
            f"| recovery: back within {RECOVERED_WITHIN}x of p50 {rec['pre_burst_p50_ms']:.0f} ms "
            f"| {seconds_or_never(back)} after the burst "
            f"(recovery calls: {', '.join(f'{k} {v}' for k, v in rec['codes'].items())}) |",
            "",
            "Burst, per second of send time (calls/s; latency ms):",
            "",
            *markdown_head(
                "s | offered | accepted | refused | accepted p50 / p99 | refused p50 / p99"
            ),
            *(
                f"| {w['t_s']} | {w['sent_s']:.0f} | {w['ok_s']:.0f} | {w['refused_s']:.0f} "
                f"| {w['ok_p50_ms']:.0f} / {w['ok_p99_ms']:.0f} "
                f"| {w['refused_p50_ms']:.1f} / {w['refused_p99_ms']:.1f} |"
                for w in b["per_second"]
            ),
            "",
            "The server's event-loop lag during the burst (how late its 20 ms timer ran; "
            "between scrapes a second apart, s from the burst's start; bounds are histogram "
            "buckets):",
            "",
            *markdown_head("s | timer samples | p99 within ms | max within ms | over 20 ms %"),
            *(
                f"| {w['t_s']} | {w['samples']:.0f} | {w['p99_le_ms']:g} | {w['max_le_ms']:g} "
                f"| {w['over_20ms_pct']:.0f} |"
                for w in b.get("server_loop_lag_per_second", [])
            ),
            "",
            "Recovery, p50 ms per 200 ms window of send time (accepted calls; - = none):",
            " ".join("-" if w["ok"] == 0 else f"{w['p50_ms']:.0f}" for w in rec["windows"]),
            *(
                [
                    "",
                    "Every burst (the table above is the first):",
                    "",
                    *markdown_head(
                        "burst | offered/s | outcomes | refused p99 ms | accepted p99 ms "
                        "| recovered after | VmRSS max / after MiB"
                    ),
                    *(
                        f"| {i + 1} | {x['offered_rate']:.0f} "
                        f"| {', '.join(f'{k} {v}' for k, v in x['codes'].items())} "
                        f"| {x['refused_p99_ms']:.0f} | {x['accepted_p99_ms']:.0f} "
                        f"| {seconds_or_never(x['recovered_after_s'])} "
                        f"| {x['rss_max_mib']:.1f} / {x['rss_after_mib']:.1f} |"
                        for i, x in enumerate(r["bursts"])
                    ),
                ]
                if len(r["bursts"]) > 1
                else []
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the burst")
    parser.add_argument("--factor", type=float, default=10.0, help="burst rate / sustainable")
    parser.add_argument("--callers", type=int, default=32, help="closed-loop callers")
    parser.add_argument("--sustain-seconds", type=float, default=10.0)
    parser.add_argument("--recovery-seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="before and after")
    parser.add_argument("--bursts", type=int, default=1, help="burst + recovery rounds")
    parser.add_argument("--queue", type=int, default=256, help="--max-queue-items")
    parser.add_argument(
        "--max-outstanding", type=int, default=4096, help="unanswered burst calls, at most"
    )
    parser.add_argument("--call-timeout", type=float, default=30.0, help="every call's deadline")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--serve-args", default="", help="extra `headserve serve` options")
    parser.add_argument(
        "--generator-nice",
        type=int,
        default=0,
        help="run this load generator at this nice (after its warm-up; the server keeps 0)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "overload.json")
    args = parser.parse_args()
    serve_args = [
        "--max-queue-items",
        str(args.queue),
        "--metrics-port",
        "0",
        *args.serve_args.split(),
    ]
    run_recorded(
        "bench/overload.py",
        serve_args,
        args.json,
        0.1,
        lambda target, pid, sampler: measure(args, target, pid, sampler),
        table,
    )


if __name__ == "__main__":
    main()
