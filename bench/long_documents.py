"""Long documents: what one costs, and what it costs everyone else (CPU, loopback).

    .venv/bin/python bench/long_documents.py interference [--rounds 3] [--seconds 10]
    .venv/bin/python bench/long_documents.py document [--repeats 5]

`interference`: 4 closed-loop callers of Encode, one sentence a call, measured alone and
while a fifth caller sends 10,000-token documents back to back (Encode, chunk_mode late),
on the packaged MiniLM. Two servers run side by side: the default one, and one started with
--long-call-tokens 1000000 (a document's rows all queue at once, as before long calls were
told apart). Each round measures the callers alone, with documents on the default server,
and with documents on the other; the report gives each phase's p50 / p99 and the ratio of
p99 with documents to p99 alone, per round.

`document`: one 10,000-token document encoded in late and in independent mode (default chunk
sizes), median latency of `--repeats` calls, and its backbone tokens per second against the
ceiling: the same model's own pass on rows of the window's length, in this process, on as
many threads as the server's workers have in all.
"""

from __future__ import annotations

import argparse
import asyncio
import pydoc_data.topics
import statistics
import time
from pathlib import Path

import grpc
from data import sentences
from report import RESULTS, markdown_head, write_json
from servers import HEADSERVE, running

from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

HERE = Path(__file__).resolve().parent
DOCUMENT_TOKENS = 10_000


def document(tokens: int = DOCUMENT_TOKENS) -> str:
    """Real English of about `tokens` tokens: CPython's reference pages, one after another."""
    from transformers import AutoTokenizer

    from headserve.server.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    pages = sorted(pydoc_data.topics.topics.values(), key=len, reverse=True)
    text = " ".join(" ".join(pages).split())
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return text[: offsets["offset_mapping"][tokens - 1][1]]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _short_callers(stub, n: int, seconds: float, texts: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            request = encoder_pb2.EncodeRequest(
                items=[common_pb2.TextInput(text=texts[i % len(texts)])]
            )
            started = time.perf_counter()
            await stub.Encode(request, timeout=60)
            latencies.append(1e3 * (time.perf_counter() - started))
            i += n

    await asyncio.gather(*(one(k) for k in range(n)))
    return latencies


async def _documents(stub, seconds: float, text: str) -> list[float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    request = encoder_pb2.EncodeRequest(
        items=[common_pb2.TextInput(text=text)],
        options=encoder_pb2.EncodeOptions(chunk_mode=encoder_pb2.CHUNK_MODE_LATE),
    )
    while time.perf_counter() < stop:
        started = time.perf_counter()
        await stub.Encode(request, timeout=120)
        latencies.append(1e3 * (time.perf_counter() - started))
    return latencies


async def phase(target: str, seconds: float, texts: list[str], text: str | None) -> dict:
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        jobs = [_short_callers(stub, 4, seconds, texts)]
        if text is not None:
            jobs.append(_documents(stub, seconds, text))
        short, *docs = await asyncio.gather(*jobs)
    return {
        "short_calls_s": len(short) / seconds,
        "short_p50_ms": _p(short, 0.5),
        "short_p99_ms": _p(short, 0.99),
        "documents": len(docs[0]) if docs else 0,
        "document_p50_ms": _p(docs[0], 0.5) if docs and docs[0] else 0.0,
    }


def interference(args: argparse.Namespace) -> None:
    texts = sentences(2000)
    text = document()
    base = [args.headserve, "serve", "--port", "0", "--head", "encode=encode"]
    rounds = []
    with (
        running(base, r"serving on port (\d+)") as (_, fair),
        running([*base, "--long-call-tokens", "1000000"], r"serving on port (\d+)") as (_, fifo),
    ):
        for target in (fair, fifo):  # warm-up, not counted
            asyncio.run(phase(target, 2.0, texts, text))
        for k in range(args.rounds):
            r = {
                "alone": asyncio.run(phase(fair, args.seconds, texts, None)),
                "documents": asyncio.run(phase(fair, args.seconds, texts, text)),
                "documents_all_at_once": asyncio.run(phase(fifo, args.seconds, texts, text)),
            }
            rounds.append(r)
            print(k, {p: {m: round(v, 1) for m, v in x.items()} for p, x in r.items()}, flush=True)
    lines = markdown_head(
        "round | alone: p50 / p99 ms | with documents: p50 / p99 ms (p99 ratio) | documents "
        "all queued at once: p50 / p99 ms (p99 ratio) | documents done",
        "lrrrr",
    )
    for k, r in enumerate(rounds):
        a, d, f = r["alone"], r["documents"], r["documents_all_at_once"]
        lines.append(
            f"| {k} | {a['short_p50_ms']:.1f} / {a['short_p99_ms']:.1f} | "
            f"{d['short_p50_ms']:.1f} / {d['short_p99_ms']:.1f} "
            f"({d['short_p99_ms'] / a['short_p99_ms']:.2f}x) | "
            f"{f['short_p50_ms']:.1f} / {f['short_p99_ms']:.1f} "
            f"({f['short_p99_ms'] / a['short_p99_ms']:.2f}x) | "
            f"{d['documents']} / {f['documents']} |"
        )
    ratios = [r["documents"]["short_p99_ms"] / r["alone"]["short_p99_ms"] for r in rounds]
    lines += ["", f"median p99 ratio with documents: {statistics.median(ratios):.2f}x"]
    print("\n".join(lines))
    write_json(RESULTS / "long_documents_interference.json", {"rounds": rounds, "table": lines})


async def _encode_document(target: str, text: str, mode: int, repeats: int) -> list[dict]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        request = encoder_pb2.EncodeRequest(
            items=[common_pb2.TextInput(text=text)],
            options=encoder_pb2.EncodeOptions(chunk_mode=mode),
        )
        runs = []
        for _ in range(repeats + 1):  # the first warms up
            started = time.perf_counter()
            response = await stub.Encode(request, timeout=300)
            runs.append(
                {
                    "seconds": time.perf_counter() - started,
                    "backbone_tokens": response.usage.input_tokens,
                    "chunks": len(response.results[0].chunks),
                }
            )
        return runs[1:]


def ceiling(text: str, row_tokens: int, seconds: float) -> float:
    """Backbone tokens/s of the model's own pass over the document in rows of `row_tokens`
    tokens, batches of 4 rows, one single-threaded worker per core (the server's layout)."""
    import os

    import torch
    from ceiling import measure
    from transformers import AutoModel, AutoTokenizer

    from headserve.server.loading import default_model_dir

    folder = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    inner = row_tokens - 2
    rows = [
        [tokenizer.cls_token_id, *ids[k : k + inner], tokenizer.sep_token_id]
        for k in range(0, len(ids), inner)
    ]
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(folder).eval()
    cores = len(os.sched_getaffinity(0))
    return measure(model, rows, 4, seconds, workers=cores)["tokens_s"]


def document_part(args: argparse.Namespace) -> None:
    text = document()
    command = [args.headserve, "serve", "--port", "0", "--head", "encode=encode"]
    results = {}
    with running(command, r"serving on port (\d+)") as (_, target):
        for name, mode in (
            ("late", encoder_pb2.CHUNK_MODE_LATE),
            ("independent", encoder_pb2.CHUNK_MODE_INDEPENDENT),
        ):
            results[name] = asyncio.run(_encode_document(target, text, mode, args.repeats))
    limits = {"late": ceiling(text, 512, 10.0), "independent": ceiling(text, 256, 10.0)}
    lines = markdown_head(
        "mode | chunks | backbone tokens | latency, median s | backbone tokens/s | ceiling "
        "tokens/s (rows of the same length) | share of the ceiling",
        "lrrrrrr",
    )
    for name, runs in results.items():
        latency = statistics.median(r["seconds"] for r in runs)
        tokens = runs[0]["backbone_tokens"]
        lines.append(
            f"| {name} | {runs[0]['chunks']} | {tokens:,} | {latency:.2f} | "
            f"{tokens / latency:,.0f} | {limits[name]:,.0f} | {tokens / latency / limits[name]:.2f} |"
        )
    print("\n".join(lines))
    write_json(
        RESULTS / "long_documents_document.json",
        {"runs": results, "ceiling_tokens_s": limits, "table": lines},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("interference", "document"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--headserve", default=HEADSERVE, help="the headserve executable")
    args = parser.parse_args()
    if args.part == "interference":
        interference(args)
    else:
        document_part(args)


if __name__ == "__main__":
    main()
