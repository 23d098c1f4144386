"""A slow plugin head beside the built-in ones: what it costs everyone else (CPU, loopback).

    .venv/bin/python bench/slow_head.py [--rounds 5] [--seconds 10] [--headserve PATH]

A third-party head plugin ("burner", made by this script under bench/.cache/slow_head and
found through its entry point like any installed one) whose `finish` burns `burn_ms` of
pure-Python CPU, holding the GIL (a loop, not a sleep). One server (the packaged MiniLM, its
default heads, plus burner heads "slow" with burn_ms=50 and "quick" with burn_ms=0) takes,
at once: 16 callers of Encode (one sentence a call), 4 callers of Heads.Run on a burner
head, and a health check every 20 ms. Rounds alternate the 4 callers between "slow" and
"quick" (the same load without the slow head); each round reports Encode's p50 / p99 and
the health check's p50 / p99, and the rise of each from a quick round to the slow round
beside it. --headserve runs another checkout's server (old code against new).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import grpc
from data import sentences
from grpc_health.v1 import health_pb2, health_pb2_grpc
from report import RESULTS, markdown_head, write_json
from servers import ENV, HEADSERVE, running

from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, heads_pb2, heads_pb2_grpc

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / ".cache" / "slow_head"

MODULE = '''"""A head whose finish burns CPU holding the GIL (bench/slow_head.py)."""
import time

from headserve.plugins.contract import (
    CONTRACT_VERSION, Head, Output, OutputField, Prepared,
)
from headserve.plugins.text import encode_text


class Burner(Head):
    task = "burn"
    outputs = (OutputField("tokens", "value", "integer"),)

    def __init__(self, context):
        self.name = context.spec.name
        self._backbone = context.backbone
        self.burn = float(context.spec.options.get("burn_ms", "0")) / 1e3

    def prepare(self, item, options):
        row, _ = encode_text(self._backbone, item, truncate=True)
        return Prepared((row,))

    def forward(self, features, rows):
        return [len(r.input_ids) for r in rows]

    def finish(self, prepared, outputs, options):
        until = time.perf_counter() + self.burn
        spins = 0
        while time.perf_counter() < until:  # pure Python: the GIL is held throughout
            spins += 1
        return Output(fields={"tokens": int(outputs[0])})


class BurnerPlugin:
    task = "burn"
    contract_version = CONTRACT_VERSION

    def load(self, context):
        return Burner(context)
'''


def install_plugin() -> Path:
    """The plugin as an installed distribution would be: a module and its dist-info."""
    info = PLUGIN / "headserve_burner-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (PLUGIN / "headserve_burner.py").write_text(MODULE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: headserve-burner\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[headserve.heads]\nburn = headserve_burner:BurnerPlugin\n"
    )
    return PLUGIN


async def _callers(n: int, seconds: float, call, texts: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    """`n` closed-loop callers for `seconds`; the latency of every call, in ms."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call(texts[i % len(texts)])
            latencies.append(1e3 * (time.perf_counter() - started))
            i += n

    await asyncio.gather(*(one(k) for k in range(n)))
    return latencies


async def _prober(channel: grpc.aio.Channel, seconds: float) -> list[float]:
    health = health_pb2_grpc.HealthStub(channel)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        started = time.perf_counter()
        await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        latencies.append(1e3 * (time.perf_counter() - started))
        await asyncio.sleep(0.02)
    return latencies


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_round(target: str, head: str, seconds: float, texts: list[str]) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        encoder = encoder_pb2_grpc.EncoderStub(channel)
        heads = heads_pb2_grpc.HeadsStub(channel)

        def encode(text: str):  # type: ignore[no-untyped-def]
            request = encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=text)])
            return encoder.Encode(request, timeout=60)

        def run(text: str):  # type: ignore[no-untyped-def]
            request = heads_pb2.RunRequest(head=head, items=[common_pb2.TextInput(text=text)])
            return heads.Run(request, timeout=60)

        encoded, ran, probed = await asyncio.gather(
            _callers(16, seconds, encode, texts),
            _callers(4, seconds, run, texts),
            _prober(channel, seconds),
        )
    return {
        "head": head,
        "encode_calls_s": len(encoded) / seconds,
        "encode_p50_ms": _p(encoded, 0.5),
        "encode_p99_ms": _p(encoded, 0.99),
        "run_calls_s": len(ran) / seconds,
        "health_p50_ms": _p(probed, 0.5),
        "health_p99_ms": _p(probed, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="pairs of quick and slow rounds")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--headserve", default=HEADSERVE, help="the headserve executable")
    parser.add_argument("--json", default=str(RESULTS / "slow_head.json"))
    args = parser.parse_args()
    folder = install_plugin()
    ENV["PYTHONPATH"] = os.pathsep.join([str(folder), ENV.get("PYTHONPATH", "")])
    texts = sentences(2000)
    command = [
        args.headserve, "serve", "--port", "0", "--allow-untrained",
        "--head", "encode=encode", "--head", "slow=burn,burn_ms=50",
        "--head", "quick=burn,burn_ms=0",
    ]  # fmt: skip
    rounds = []
    with running(command, r"serving on port (\d+)") as (_, target):
        asyncio.run(one_round(target, "quick", 2.0, texts))  # warm-up, not counted
        for k in range(args.rounds):
            order = ("quick", "slow") if k % 2 == 0 else ("slow", "quick")
            pair = {
                head: asyncio.run(one_round(target, head, args.seconds, texts)) for head in order
            }
            rounds.append(pair)
            print(k, {h: {m: round(v, 1) for m, v in r.items() if m != "head"} for h, r in pair.items()},
                  flush=True)  # fmt: skip
    rise = {
        metric: [r["slow"][metric] - r["quick"][metric] for r in rounds]
        for metric in ("encode_p50_ms", "encode_p99_ms", "health_p50_ms", "health_p99_ms")
    }
    lines = markdown_head(
        "round | quick: Encode p50 / p99 ms | slow: Encode p50 / p99 ms | quick: health "
        "p50 / p99 ms | slow: health p50 / p99 ms | slow's Run calls/s",
        "lrrrrr",
    )
    for k, r in enumerate(rounds):
        q, s = r["quick"], r["slow"]
        lines.append(
            f"| {k} | {q['encode_p50_ms']:.1f} / {q['encode_p99_ms']:.1f} | "
            f"{s['encode_p50_ms']:.1f} / {s['encode_p99_ms']:.1f} | "
            f"{q['health_p50_ms']:.1f} / {q['health_p99_ms']:.1f} | "
            f"{s['health_p50_ms']:.1f} / {s['health_p99_ms']:.1f} | {s['run_calls_s']:.1f} |"
        )
    medians = {metric: statistics.median(values) for metric, values in rise.items()}
    lines.append("")
    lines.append(
        "median rise, slow against quick: "
        + ", ".join(f"{m} {v:+.1f} ms" for m, v in medians.items())
    )
    print("\n".join(lines))
    write_json(args.json, {"rounds": rounds, "rise": rise, "median_rise": medians})


if __name__ == "__main__":
    main()
