"""The refusal floor: how fast gRPC's own concurrency limit refuses calls on this machine with
no model behind it, beside headserve under the same burst (CPU, loopback).

    .venv/bin/python bench/refusal_floor.py                 # 3 rounds, 6 s per cell, 1,800/s
    .venv/bin/python bench/refusal_floor.py --rounds 1 --seconds 3 --rate 1000

Under overload every refusal headserve gives comes from gRPC's limit on calls in progress
(`maximum_concurrent_rpcs`, headserve's --max-concurrent-calls): gRPC refuses the call before
any headserve code runs. So this script asks what that refusal costs in gRPC itself, and
how much the model computing beside it adds. Four servers, each a fresh process (in this
process's session: the kernel's autogroups share the CPU between sessions before nice
counts), take the same open-loop burst of Encode calls (one sentence each, no retries,
bench/load.py's generator in this process), in a rotating order each round:

- bare: a grpc.aio server with headserve's settings (the same event loop, uvloop when
  installed, and maximum_concurrent_rpcs=128) whose Encode answers an empty reply after
  --hold s. Its 128 slots turn over at 128 / hold calls/s (0.7 s: about 180/s, headserve's
  sustainable rate here), and every other call is refused by gRPC. Nothing else runs in it.
- bare + burn: the same, with one thread per core multiplying small matrices in torch at
  nice +19 (headserve's model workers run at nice +19): their CPU, little memory traffic.
- bare + model: the same, with one thread per core running the packaged backbone on batches
  of 16 x 32 tokens at nice +19: a model worker's CPU and memory traffic, without headserve.
- headserve: `headserve serve --max-queue-items 256`, the overload benchmark's server.

Recorded per cell: refused latency p50/p99/max, accepted calls/s, the server's CPU, how much
of the burst its event loop's thread was on a core and how much it waited for one
(/proc/PID/task/PID/schedstat), and the machine's busy and stolen time. A Markdown table goes to stdout, everything
to bench/results/refusal_floor.json (--json), the servers' logs beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from data import sentences
from load import by_code, calls, cpu_seconds, machine_ticks, open_loop, percentile
from overload import ms_stats
from report import RESULTS, markdown_head, write_json
from servers import headserve_server

NICE = 19  # headserve's model workers' default (--worker-nice)
BURNERS = {"bare": None, "bare + burn": "burn", "bare + model": "model"}  # what runs beside
CELLS = (*BURNERS, "headserve")


# --- the bare server (this script, run with --serve-bare) ----------------------------------------


def burn() -> None:
    """Multiply small matrices forever (they stay in cache), on one torch thread, at nice
    NICE: a model worker's CPU without its memory traffic."""
    import torch

    from headserve.server.core.threads import lower_priority

    lower_priority(NICE)
    a = torch.randn(384, 384)
    while True:
        a = torch.tanh(a @ a)


def run_model(model: Any) -> None:
    """Run the packaged backbone on batches of 16 x 32 tokens forever, at nice NICE: a model
    worker's CPU, memory traffic and GIL, without headserve's scheduler."""
    import torch

    from headserve.server.core.threads import lower_priority

    lower_priority(NICE)
    ids = torch.randint(1000, 2000, (16, 32))
    with torch.inference_mode():
        while True:
            model(input_ids=ids)


def start_burners(kind: str) -> None:
    """One thread per core of `kind` ("burn" or "model"), each on one torch thread."""
    import torch

    torch.set_num_threads(1)
    if kind == "model":
        from transformers import AutoModel

        from headserve.server.backbones.backbone import default_model_dir

        model = AutoModel.from_pretrained(default_model_dir()).eval()
        target, args = run_model, (model,)
    else:
        target, args = burn, ()
    for _ in range(os.cpu_count() or 1):
        threading.Thread(target=target, args=args, daemon=True).start()


async def serve_bare(port_file: Path, hold: float, max_calls: int, burners: str | None) -> None:
    from headserve.v1 import encoder_pb2, encoder_pb2_grpc

    class Holding(encoder_pb2_grpc.EncoderServicer):
        async def Encode(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
            await asyncio.sleep(hold)
            return encoder_pb2.EncodeResponse()

    if burners is not None:
        start_burners(burners)
    server = grpc.aio.server(maximum_concurrent_rpcs=max_calls)
    encoder_pb2_grpc.add_EncoderServicer_to_server(Holding(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    partial = port_file.with_suffix(".partial")
    partial.write_text(str(port))
    partial.rename(port_file)  # whole, or not there
    await server.wait_for_termination()


# --- the generator -------------------------------------------------------------------------------


class BareServer:
    """This script with --serve-bare in a process group of its own, so that its threads die
    with it, but in this generator's session, as headserve's server is: the kernel's autogroups
    share the CPU between sessions first, and only then by nice."""

    def __init__(self, args: argparse.Namespace, name: str, log: Path) -> None:
        self.port_file = log.with_suffix(".port")
        self.port_file.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--serve-bare", str(self.port_file)]
        command += ["--hold", str(args.hold), "--max-calls", str(args.max_calls)]
        if BURNERS[name] is not None:
            command += ["--burners", str(BURNERS[name])]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=out, process_group=0)

    def __enter__(self) -> tuple[subprocess.Popen[bytes], str]:
        deadline = time.monotonic() + 120
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare server did not start")
            time.sleep(0.05)
        return self.proc, f"127.0.0.1:{self.port_file.read_text()}"

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.port_file.unlink(missing_ok=True)


def loop_schedstat(pid: int) -> tuple[int, int]:
    """The server's main thread (its event loop): ns on a core, and ns runnable but waiting
    for one (/proc/PID/task/PID/schedstat)."""
    ran, waited, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(ran), int(waited)


async def burst(target: str, pid: int, texts: list[str], args: argparse.Namespace) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        rpcs = calls(channel, "encode", timeout=args.call_timeout)
        await asyncio.gather(*(rpcs[0](t) for t in texts[:8]))  # connected and warm
        await asyncio.sleep(args.hold + 0.5)
        wall, server, (busy, steal, total) = time.perf_counter(), cpu_seconds(pid), machine_ticks()
        ran, waited = loop_schedstat(pid)
        result = await open_loop(
            rpcs,
            texts,
            args.rate,
            args.seconds,
            max_outstanding=args.max_outstanding,
            drain_timeout=args.call_timeout + 2,
        )
        seconds = time.perf_counter() - wall
        server2, (busy2, steal2, total2) = cpu_seconds(pid), machine_ticks()
        ran2, waited2 = loop_schedstat(pid)
    every = result.recorder.calls
    ticks = max(1, total2 - total)
    return {
        "offered_rate": result.offered_rate,
        "skipped_max_outstanding": result.skipped_outstanding,
        "codes": by_code(every),
        "messages": result.recorder.messages,
        "refused": ms_stats([c for c in every if c.code == "RESOURCE_EXHAUSTED"]),
        "accepted_s": sum(c.code == "OK" for c in every) / result.dispatch_seconds,
        "send_lag_p99_ms": percentile(result.send_lag_ms, 0.99),
        "server_pct": 100 * (server2 - server) / seconds,
        "loop_ran_pct": 100 * (ran2 - ran) / 1e9 / seconds,
        "loop_waited_pct": 100 * (waited2 - waited) / 1e9 / seconds,
        "machine_busy_pct": 100 * (busy2 - busy + steal2 - steal) / ticks,
        "steal_pct": 100 * (steal2 - steal) / ticks,
    }


def cell(name: str, texts: list[str], args: argparse.Namespace) -> dict:
    log = args.json.with_name(f"refusal_floor.{name.replace(' + ', '_')}.log")
    server = (
        headserve_server(["--max-queue-items", "256"], log)
        if name == "headserve"
        else BareServer(args, name, log)
    )
    with server as (proc, target):
        return asyncio.run(burst(target, proc.pid, texts, args))


def table(rounds: list[dict[str, dict]]) -> str:
    lines = markdown_head(
        "round | server | offered calls/s | refused | refused p50 / p99 / max ms "
        "| accepted/s | server CPU % | event loop on a core / waiting for one % "
        "| machine busy / stolen %",
        "llrrlrr",
    )
    for number, cells in enumerate(rounds, 1):
        for name, r in cells.items():
            f = r["refused"]
            lines.append(
                f"| {number} | {name} | {r['offered_rate']:,.0f} | {f['n']:,} "
                f"| {f['p50_ms']:.1f} / {f['p99_ms']:.1f} / {f['max_ms']:.1f} "
                f"| {r['accepted_s']:.1f} | {r['server_pct']:.0f} "
                f"| {r['loop_ran_pct']:.0f} / {r['loop_waited_pct']:.0f} "
                f"| {r['machine_busy_pct']:.0f} / {r['steal_pct']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each burst")
    parser.add_argument("--rate", type=float, default=1800.0, help="calls/s offered, open loop")
    parser.add_argument("--hold", type=float, default=0.7, help="bare: seconds per accepted call")
    parser.add_argument("--max-calls", type=int, default=128, help="maximum_concurrent_rpcs")
    parser.add_argument("--max-outstanding", type=int, default=4096)
    parser.add_argument("--call-timeout", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "refusal_floor.json")
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--burners", choices=("burn", "model"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        from headserve.server.event_loop import default_kind, run

        run(serve_bare(args.serve_bare, args.hold, args.max_calls, args.burners), default_kind())
        return

    args.json.parent.mkdir(parents=True, exist_ok=True)
    texts = sentences(2000)
    rounds = []
    for number in range(args.rounds):
        order = args.cells[number % len(args.cells) :] + args.cells[: number % len(args.cells)]
        rounds.append({name: cell(name, texts, args) for name in order})
        print(f"round {number + 1} done", file=sys.stderr, flush=True)
    print(table(rounds))
    command = " ".join([".venv/bin/python bench/refusal_floor.py", *sys.argv[1:]])
    result = {
        "command": command,
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "cores": os.cpu_count(),
        "rounds": rounds,
    }
    write_json(args.json, result, indent=1, strict=True)


if __name__ == "__main__":
    main()
