"""Two heads on the same texts: one RunHeads call against an Encode and a Classify call (issue 19).

    .venv/bin/python bench/run_heads.py [--callers 64] [--seconds 15] [--rounds 2]

One `headserve serve` on the packaged model (its encode head and its sentiment head). Each
round runs --callers closed-loop callers for --seconds two ways, the order alternating: each
sentence as ONE RunHeads call naming both heads, and as an Encode call then a Classify call
of it. Prints sentences/s each way (a sentence is done when both heads answered it), p50,
the server's distinct backbone rows per sentence (--metrics-port: headserve_backbone_rows), and
RunHeads / separate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc
from data import sentences
from load import percentile, scrape
from report import RESULTS, write_json
from servers import metrics_url, served

from headserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    heads_pb2,
    heads_pb2_grpc,
)


async def closed_loop(
    call: Callable[[str], Awaitable[None]], texts: list[str], callers: int, seconds: float
) -> dict[str, float]:
    counter = itertools.count()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            text = texts[next(counter) % len(texts)]
            began = time.perf_counter()
            await call(text)
            latencies.append((time.perf_counter() - began) * 1e3)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall = time.perf_counter() - began
    return {"sentences_s": len(latencies) / wall, "p50_ms": percentile(latencies, 0.5)}


def rows_so_far(url: str) -> float:
    """Distinct backbone rows computed so far."""
    return sum(s.value for s in scrape(url) if s.name == "headserve_backbone_rows_total")


async def measure(target: str, url: str, callers: int, seconds: float, rounds: int) -> list:
    texts = sentences(2000)
    results = []
    async with grpc.aio.insecure_channel(target) as channel:
        heads = heads_pb2_grpc.HeadsStub(channel)
        encoder = encoder_pb2_grpc.EncoderStub(channel)
        classifier = classifier_pb2_grpc.ClassifierStub(channel)
        both = [heads_pb2.HeadCall(head="encode"), heads_pb2.HeadCall(head="sentiment")]

        async def together(text: str) -> None:
            items = [common_pb2.TextInput(text=text)]
            await heads.RunHeads(heads_pb2.RunHeadsRequest(items=items, heads=both), timeout=60)

        async def apart(text: str) -> None:
            items = [common_pb2.TextInput(text=text)]
            options = classifier_pb2.ClassifyOptions(heads=["sentiment"])
            await encoder.Encode(encoder_pb2.EncodeRequest(items=items), timeout=60)
            await classifier.Classify(
                classifier_pb2.ClassifyRequest(items=items, options=options), timeout=60
            )

        for warm in (together, apart):
            await closed_loop(warm, texts, callers, 2.0)
        for n in range(rounds):
            order = [("run_heads", together), ("separate", apart)]
            if n % 2:
                order.reverse()
            one = {}
            for name, call in order:
                rows = rows_so_far(url)
                result = await closed_loop(call, texts, callers, seconds)
                done = result["sentences_s"] * seconds
                result["rows_per_sentence"] = (rows_so_far(url) - rows) / done
                one[name] = result
            results.append(one)
            print(
                f"round {n + 1}: RunHeads {one['run_heads']['sentences_s']:.0f} sentences/s "
                f"({one['run_heads']['rows_per_sentence']:.2f} rows each), Encode + Classify "
                f"{one['separate']['sentences_s']:.0f} ({one['separate']['rows_per_sentence']:.2f}"
                f" rows each): {one['run_heads']['sentences_s'] / one['separate']['sentences_s']:.2f}",
                flush=True,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=RESULTS / "run_heads.json")
    args = parser.parse_args()
    log: list[str] = []
    with served(["--metrics-port", "0"], log=log) as (target, _):
        url = metrics_url("".join(log))
        rounds = asyncio.run(measure(target, url, args.callers, args.seconds, args.rounds))
    ratios = [r["run_heads"]["sentences_s"] / r["separate"]["sentences_s"] for r in rounds]
    out = {"callers": args.callers, "rounds": rounds, "ratios": ratios}
    out["ratio_median"] = statistics.median(ratios)
    write_json(args.json, out)
    print(f"RunHeads / Encode + Classify at {args.callers} callers: {out['ratio_median']:.2f}")


if __name__ == "__main__":
    main()
