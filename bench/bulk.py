"""Bulk work beside live traffic (CPU, loopback, the packaged MiniLM).

    .venv/bin/python bench/bulk.py interference [--rounds 3] [--seconds 10]
    .venv/bin/python bench/bulk.py throughput --base-bin OLD/headserve [--rounds 2]

`interference`: 8 closed-loop interactive callers of Encode, one sentence a call, measured
alone; then while 4 bulk callers (`x-priority: bulk`) keep the server saturated with Encode
calls of 64 sentences; then with the same 4 callers sending the same calls as interactive
work (no class: what a re-index did to live traffic before calls had one). One server, the
phases interleaved in each round. Reported per round: p50 / p99 of the interactive calls in
each phase, the p99 ratio to alone, and the bulk sentences/s.

`throughput`: 2,000 sentences as bulk work on this server, against 64 closed-loop unary Encode
callers of one sentence on `--base-bin` (another checkout's `headserve`: the code before bulk
work had a class), in alternating order; reported: sentences/s of each and the ratios per
round. The bulk work is sent three ways: a batch job of one sentence a line, and one of 64
sentences a line (OpenAI's Files and Batch APIs through the `openai` package, from upload to
the job's completion), and one EncodeStream of 64-sentence requests (`x-priority: bulk`, 4 in
flight).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from data import sentences
from report import RESULTS, markdown_head, write_json
from servers import HEADSERVE, running

from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

BULK = (("x-priority", "bulk"),)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _request(texts: list[str], **fields: object) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=t) for t in texts], **fields)  # type: ignore[arg-type]


async def _interactive(stub, callers: int, stop: float, texts: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []

    async def one(k: int) -> None:
        i = k
        while True:  # one call at least
            started = time.perf_counter()
            await stub.Encode(_request([texts[i % len(texts)]]), timeout=60)
            latencies.append(1e3 * (time.perf_counter() - started))
            i += callers
            if time.perf_counter() >= stop:
                return

    await asyncio.gather(*(one(k) for k in range(callers)))
    return latencies


async def _bulk(stub, callers: int, stop: float, texts: list[str], metadata) -> int:  # type: ignore[no-untyped-def]
    done = 0

    async def one(k: int) -> None:
        nonlocal done
        i = k * 64
        while time.perf_counter() < stop:
            batch = [texts[(i + j) % len(texts)] for j in range(64)]
            await stub.Encode(_request(batch), metadata=metadata, timeout=120)
            done += len(batch)
            i += callers * 64

    await asyncio.gather(*(one(k) for k in range(callers)))
    return done


def _bulk_process(target: str, seconds: float, texts: list[str], bulk: bool, out: Any) -> None:
    """The bulk callers, in a process of their own at the lowest CPU priority: a bulk client
    runs on another machine, and on these 2 cores must not slow the interactive callers'
    own event loop (what is measured is the server)."""
    os.nice(19)

    async def main() -> int:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = encoder_pb2_grpc.EncoderStub(channel)
            stop = time.perf_counter() + seconds
            return await _bulk(stub, 4, stop, texts, BULK if bulk else ())

    out.put(asyncio.run(main()))


async def _interactive_phase(target: str, seconds: float, texts: list[str]) -> list[float]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        await _interactive(stub, 8, time.perf_counter(), texts)  # the channel up: not counted
        return await _interactive(stub, 8, time.perf_counter() + seconds, texts)


def phase(target: str, seconds: float, texts: list[str], bulk: str | None) -> dict:
    """8 interactive callers for `seconds`; with `bulk` ("bulk", "interactive") 4 callers of
    64-sentence calls of that class beside them, from another process."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    helper = None
    if bulk is not None:
        helper = context.Process(
            target=_bulk_process, args=(target, seconds + 1.0, texts[::-1], bulk == "bulk", out)
        )
        helper.start()
        time.sleep(1.0)  # its callers running before the interactive ones start
    live = asyncio.run(_interactive_phase(target, seconds, texts))
    done = 0
    if helper is not None:
        done = out.get(timeout=300)
        helper.join()
    return {
        "interactive_calls_s": len(live) / seconds,
        "p50_ms": _p(live, 0.5),
        "p99_ms": _p(live, 0.99),
        "bulk_sentences_s": done / (seconds + 1.0),
    }


def interference(args: argparse.Namespace) -> None:
    texts = sentences(2000)
    command = [args.headserve, "serve", "--port", "0", "--head", "encode=encode"]
    rounds = []
    with running([*command, *args.serve.split()], r"serving on port (\d+)") as (_, target):
        phase(target, 2.0, texts, "bulk")  # warm-up, not counted
        for k in range(args.rounds):
            r = {
                "alone": phase(target, args.seconds, texts, None),
                "bulk": phase(target, args.seconds, texts, "bulk"),
                "unclassed": phase(target, args.seconds, texts, "interactive"),
            }
            rounds.append(r)
            print(k, {p: {m: round(v, 1) for m, v in x.items()} for p, x in r.items()}, flush=True)
    lines = markdown_head(
        "round | alone: p50 / p99 ms | beside bulk work: p50 / p99 ms (p99 ratio), bulk "
        "sentences/s | beside the same work unclassed: p50 / p99 ms (p99 ratio), its sentences/s",
        "lrrr",
    )
    for k, r in enumerate(rounds):
        a, b, u = r["alone"], r["bulk"], r["unclassed"]
        lines.append(
            f"| {k} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | "
            f"{b['p50_ms']:.1f} / {b['p99_ms']:.1f} ({b['p99_ms'] / a['p99_ms']:.2f}x), "
            f"{b['bulk_sentences_s']:.0f} | "
            f"{u['p50_ms']:.1f} / {u['p99_ms']:.1f} ({u['p99_ms'] / a['p99_ms']:.2f}x), "
            f"{u['bulk_sentences_s']:.0f} |"
        )
    ratios = [r["bulk"]["p99_ms"] / r["alone"]["p99_ms"] for r in rounds]
    lines += ["", f"median p99 ratio beside bulk work: {statistics.median(ratios):.2f}x"]
    print("\n".join(lines))
    write_json(RESULTS / "bulk_interference.json", {"rounds": rounds, "table": lines})


async def _job(target: str, texts: list[str]) -> float:
    """Seconds to encode `texts` as one bulk stream of 64-sentence requests, 4 in flight."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
        window = asyncio.Semaphore(4)

        async def requests():  # type: ignore[no-untyped-def]
            for n, batch in enumerate(batches):
                await window.acquire()
                yield _request(batch, id=str(n))

        started = time.perf_counter()
        answered = 0
        async for reply in stub.EncodeStream(requests(), metadata=BULK, timeout=600):
            assert not reply.HasField("error"), reply.error
            answered += len(reply.response.results)
            window.release()
        assert answered == len(texts)
        return time.perf_counter() - started


async def _unary_callers(target: str, seconds: float, texts: list[str]) -> float:
    """Sentences/s of 64 closed-loop unary callers of one sentence."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        latencies = await _interactive(stub, 64, time.perf_counter() + seconds, texts)
    return len(latencies) / seconds


def _batch_job(http: str, texts: list[str], per_line: int, folder: Path) -> float:
    """Seconds from uploading `texts` as a batch job (`per_line` sentences a line) to its
    completion, through the `openai` package."""
    import openai

    client = openai.OpenAI(base_url=f"http://{http}/v1", api_key="none")
    path = folder / f"job-{per_line}.jsonl"
    with path.open("w") as f:
        for n, i in enumerate(range(0, len(texts), per_line)):
            body = {"input": texts[i : i + per_line]}
            line = {"custom_id": str(n), "method": "POST", "url": "/v1/embeddings", "body": body}
            f.write(json.dumps(line) + "\n")
    started = time.perf_counter()
    with path.open("rb") as f:
        upload = client.files.create(file=f, purpose="batch")
    job = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    while job.status not in ("completed", "failed", "cancelled"):
        time.sleep(0.05)
        job = client.batches.retrieve(job.id)
    elapsed = time.perf_counter() - started
    assert job.status == "completed" and job.request_counts.failed == 0, job
    return elapsed


def throughput(args: argparse.Namespace) -> None:
    texts = sentences(2000)
    serve = ["serve", "--port", "0", "--head", "encode=encode"]
    folder = Path(tempfile.mkdtemp())
    new_args = [*serve, "--http-port", "0", "--jobs-dir", str(folder / "jobs")]
    log: list[str] = []
    sides = ("job_1", "job_64", "stream", "base")
    rounds = []
    with (
        running([args.headserve, *new_args], r"serving on port (\d+)", log) as (_, new),
        running([args.base_bin, *serve], r"serving on port (\d+)") as (_, base),
    ):
        found = re.search(r"OpenAI-style HTTP on port (\d+)", "".join(log))
        assert found is not None
        http = f"127.0.0.1:{found.group(1)}"
        asyncio.run(_job(new, texts[:256]))  # warm-up, not counted
        _batch_job(http, texts[:256], 1, folder)
        asyncio.run(_unary_callers(base, 2.0, texts))
        for k in range(args.rounds):
            r: dict[str, float] = {}
            for side in sides if k % 2 == 0 else sides[::-1]:
                if side == "base":
                    r[side] = asyncio.run(_unary_callers(base, args.seconds, texts))
                elif side == "stream":
                    r[side] = len(texts) / asyncio.run(_job(new, texts))
                else:
                    r[side] = len(texts) / _batch_job(http, texts, int(side[4:]), folder)
            rounds.append(r)
            print(k, {m: round(v, 2) for m, v in r.items()}, flush=True)
    lines = markdown_head(
        "round | batch job, 1 sentence a line: sentences/s (ratio) | batch job, 64 a line "
        "(ratio) | bulk stream of 64-sentence requests (ratio) | 64 unary callers, code "
        "before classes: sentences/s",
        "lrrrr",
    )
    for k, r in enumerate(rounds):
        cells = " | ".join(f"{r[s]:.1f} ({r[s] / r['base']:.2f})" for s in sides[:3])
        lines.append(f"| {k} | {cells} | {r['base']:.1f} |")
    lines.append("")
    for side in sides[:3]:
        ratio = statistics.median(r[side] / r["base"] for r in rounds)
        lines.append(f"median ratio, {side}: {ratio:.2f}")
    print("\n".join(lines))
    write_json(RESULTS / "bulk_throughput.json", {"rounds": rounds, "table": lines})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    one = parts.add_parser("interference")
    one.add_argument("--rounds", type=int, default=3)
    one.add_argument("--seconds", type=float, default=10.0)
    one.add_argument("--serve", default="", help="more `headserve serve` options")
    two = parts.add_parser("throughput")
    two.add_argument("--base-bin", required=True, help="the `headserve` to compare against")
    two.add_argument("--rounds", type=int, default=3)
    two.add_argument("--seconds", type=float, default=15.0)
    for part in (one, two):
        part.add_argument("--headserve", default=HEADSERVE)
    args = parser.parse_args()
    {"interference": interference, "throughput": throughput}[args.part](args)


if __name__ == "__main__":
    main()
