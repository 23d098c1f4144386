"""The event loop's CPU per Encode call, without gRPC (issue 18: the server's own cost per call).

    .venv/bin/python bench/call_cost.py [--calls 3000] [--callers 64] [--rounds 3]

End to end (bench/ab.py --cpu) the server's CPU per call mixes gRPC's own work, the model
workers' plumbing and the noise of two shared cores. Here the call path that is headserve's
own code runs in this process: the call pipeline (request id, admission, access log, metrics)
behind gRPC's interceptor, the Encode
servicer, the core (tokenizing, checks) and the scheduler, with the packaged model on its
workers, driven by --callers concurrent coroutines of one sentence each on a stand-in for
gRPC's servicer context. Reported per call: the event loop thread's CPU (time.thread_time),
and the same with the access log off; in each, how much of it the Rust tokenizer took
(measured around its call, under the same load). Rounds alternate the two so that a drift
of the machine hits both. A bare grpc.aio server's cost per call is the rest of the
end-to-end figure (BENCHMARKS.md, "Server CPU per call").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from typing import Any

from data import sentences
from report import RESULTS, markdown_head, write_json

from headserve.server.calls.pipeline import Admission, Pipeline
from headserve.server.calls.state import ServerState
from headserve.server.event_loop import default_kind, new_event_loop
from headserve.server.loading import Settings, build_core
from headserve.server.observability import logs
from headserve.server.tasks import encode as encode_task
from headserve.server.tasks.running import answering
from headserve.server.transports.grpc import CallInterceptor
from headserve.v1 import common_pb2
from headserve.v1 import encoder_pb2 as pb

RPC = "headserve.v1.Encoder/Encode"


class Context:
    """What the interceptor and the servicer ask of grpc.aio's servicer context."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort_with_status(self, status: Any) -> None:
        raise RuntimeError(f"the call failed: {status}")

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None


class TimedTokenizer:
    """The Rust tokenizer behind transformers', with the CPU its calls took on this thread."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.cpu = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode_batch(self, *args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return self._inner.encode_batch(*args, **kwargs)
        finally:
            self.cpu += time.thread_time() - started


async def calls(encode: Any, requests: list[Any], count: int, callers: int) -> int:
    """`count` calls of `encode`, by `callers` concurrent callers, one request at a time each."""
    sent = 0

    async def caller() -> None:
        nonlocal sent
        while sent < count:
            request = requests[sent % len(requests)]
            sent += 1
            (await encode(request, Context())).SerializeToString()

    await asyncio.gather(*(caller() for _ in range(callers)))
    return sent


async def measure(core: Any, tokenizer: TimedTokenizer, args: argparse.Namespace) -> list[dict]:
    state = ServerState(core=core)
    one, _ = answering(state, encode_task.TASK)

    async def encode_rpc(request: Any, context: Any) -> Any:
        return await one(request)

    texts = sentences(2000)
    requests = [pb.EncodeRequest(items=[common_pb2.TextInput(text=t)]) for t in texts]
    rounds = []
    for n in range(args.rounds + 1):  # the first round warms up
        runs = {}
        for log in (True, False) if n % 2 == 0 else (False, True):
            pipeline = Pipeline(state, Admission(), metrics=core.scheduler.metrics, access_log=log)
            encode = CallInterceptor(pipeline, (encode_task.TASK,))._unary(encode_rpc, RPC)
            tokenizer.cpu = 0.0
            cpu, wall = time.thread_time(), time.perf_counter()
            sent = await calls(encode, requests, args.calls, args.callers)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            runs["log" if log else "no_log"] = {
                "loop_ms_per_call": 1e3 * cpu / sent,
                "tokenizer_ms_per_call": 1e3 * tokenizer.cpu / sent,
                "calls_s": sent / wall,
            }
        if n:
            rounds.append(runs)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="per run")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=RESULTS / "call_cost.json")
    args = parser.parse_args()
    logs.configure("info")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115
    core = build_core(Settings(allow_untrained=True))
    transformers_tokenizer = core.backbone.tokenizer
    tokenizer = TimedTokenizer(transformers_tokenizer._tokenizer)
    transformers_tokenizer._tokenizer = tokenizer

    async def run() -> list[dict]:
        await core.scheduler.start()
        try:
            return await measure(core, tokenizer, args)
        finally:
            await core.scheduler.stop()

    loop = new_event_loop(default_kind())
    try:
        rounds = loop.run_until_complete(run())
    finally:
        loop.close()
    write_json(args.json, {"calls": args.calls, "callers": args.callers, "rounds": rounds})
    print(f"{args.callers} callers, {args.calls} one-sentence Encode calls per run, no gRPC\n")
    print("\n".join(markdown_head("round | access log | loop CPU ms/call | of it tokenizer")))
    for n, runs in enumerate(rounds, 1):
        for name, run in runs.items():
            print(
                f"| {n} | {'on' if name == 'log' else 'off'} | {run['loop_ms_per_call']:.3f} "
                f"| {run['tokenizer_ms_per_call']:.3f} |"
            )
    for name in ("log", "no_log"):
        median = statistics.median(r[name]["loop_ms_per_call"] for r in rounds)
        print(f"\nmedian, access log {'on' if name == 'log' else 'off'}: {median:.3f} ms", end="")
    print(file=sys.stdout)


if __name__ == "__main__":
    main()
