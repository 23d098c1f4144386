"""The feature cache (`--feature-cache-mb`): a corpus scored again by a head it has never been
through, without the backbone; and the memory it takes (CPU, loopback, the packaged MiniLM and
its sentiment head).

    .venv/bin/python bench/feature_cache.py [--rounds 2] [--small-mb 8]

`rescore`: on a server started with `--feature-cache-mb 256`, 2,000 sentences are encoded
(Encode, 64-sentence calls, 4 in flight), then classified by the sentiment head (Classify, the
same calls): sentences/s of each pass, and the second over the first. Each round uses the
corpus in a new order of calls, on a fresh server.

`memory`: two servers side by side, one with `--feature-cache-mb SMALL` (much smaller than the
corpus' states: 2,000 sentences x 30 tokens x 384 floats is about 90 MB) and one without; the
same corpus is encoded twice on each, then classified; reported: each server's VmRSS after,
their difference against the bound, and the cache's bytes, hits and evictions (/metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import grpc
from data import sentences
from load import scrape, vmrss_kib
from report import RESULTS, markdown_head, write_json
from servers import HEADSERVE, served

from headserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
)


async def _pass(target: str, texts: list[str], task: str) -> float:
    """Seconds to send `texts` through `task` (encode, classify), 64 a call, 4 calls in flight."""
    async with grpc.aio.insecure_channel(target) as channel:
        encode = encoder_pb2_grpc.EncoderStub(channel)
        classify = classifier_pb2_grpc.ClassifierStub(channel)
        batches = [texts[i : i + 64] for i in range(0, len(texts), 64)]
        window = asyncio.Semaphore(4)

        async def one(batch: list[str]) -> None:
            items = [common_pb2.TextInput(text=t) for t in batch]
            async with window:
                if task == "encode":
                    await encode.Encode(encoder_pb2.EncodeRequest(items=items), timeout=300)
                else:
                    options = classifier_pb2.ClassifyOptions(heads=["sentiment"])
                    request = classifier_pb2.ClassifyRequest(items=items, options=options)
                    await classify.Classify(request, timeout=300)

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in batches))
        return time.perf_counter() - started


def _metric(url: str, name: str) -> float:
    return sum(s.value for s in scrape(url) if s.name == name)


def rescore(args: argparse.Namespace, texts: list[str]) -> list[dict]:
    rounds = []
    for k in range(args.rounds):
        order = random.Random(k).sample(texts, len(texts))
        with served(["--feature-cache-mb", "256"], metrics=True, headserve=args.headserve) as (
            target,
            watch,
        ):
            asyncio.run(_pass(target, sentences(2100)[2000:], "encode"))  # warm-up, other text
            first = asyncio.run(_pass(target, order, "encode"))
            second = asyncio.run(_pass(target, order[::-1], "classify"))
            url = watch[watch.index("--metrics") + 1]
            hits = _metric(url, "headserve_feature_cache_hits_total")
        r = {
            "encode_sentences_s": len(texts) / first,
            "classify_sentences_s": len(texts) / second,
            "ratio": first / second,
            "hits": hits,
        }
        rounds.append(r)
        print("rescore", k, {m: round(v, 2) for m, v in r.items()}, flush=True)
    return rounds


def memory(args: argparse.Namespace, texts: list[str]) -> dict:
    with (
        served(["--feature-cache-mb", str(args.small_mb)], metrics=True) as (small, watch),
        served([], metrics=True) as (plain, plain_watch),
    ):
        for target in (small, plain):
            for _ in range(2):
                asyncio.run(_pass(target, texts, "encode"))
            asyncio.run(_pass(target, texts, "classify"))
        pids = [int(w[w.index("--server-pid") + 1]) for w in (watch, plain_watch)]
        url = watch[watch.index("--metrics") + 1]
        r = {
            "cached_rss_mib": vmrss_kib(pids[0]) / 1024,
            "plain_rss_mib": vmrss_kib(pids[1]) / 1024,
            "cache_bytes_mib": _metric(url, "headserve_feature_cache_bytes") / 2**20,
            "hits": _metric(url, "headserve_feature_cache_hits_total"),
            "evictions": _metric(url, "headserve_feature_cache_evictions_total"),
            "bound_mib": float(args.small_mb),
        }
    r["difference_mib"] = r["cached_rss_mib"] - r["plain_rss_mib"]
    print("memory", {m: round(v, 1) for m, v in r.items()}, flush=True)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--small-mb", type=int, default=8)
    parser.add_argument("--headserve", default=HEADSERVE)
    args = parser.parse_args()
    texts = sentences(2000)
    rounds = rescore(args, texts)
    mem = memory(args, texts)
    lines = markdown_head(
        "round | encode, first pass: sentences/s | classify, from the cache: sentences/s | "
        "second / first",
        "lrrr",
    )
    for k, r in enumerate(rounds):
        lines.append(
            f"| {k} | {r['encode_sentences_s']:.1f} | {r['classify_sentences_s']:.1f} | "
            f"{r['ratio']:.2f}x |"
        )
    lines += [
        "",
        f"memory: VmRSS {mem['cached_rss_mib']:.0f} MiB with a {mem['bound_mib']:.0f} MiB "
        f"cache against {mem['plain_rss_mib']:.0f} MiB without (difference "
        f"{mem['difference_mib']:+.1f} MiB); the cache held {mem['cache_bytes_mib']:.1f} MiB "
        f"after {mem['evictions']:.0f} evictions and {mem['hits']:.0f} hits",
    ]
    print("\n".join(lines))
    write_json(RESULTS / "feature_cache.json", {"rounds": rounds, "memory": mem, "table": lines})


if __name__ == "__main__":
    main()
