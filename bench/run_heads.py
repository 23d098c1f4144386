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
import statistics

import grpc
from data import sentences
from load import scrape, side_by_side
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


def rows_so_far(url: str) -> float:
    """Distinct backbone rows computed so far."""
    return sum(s.value for s in scrape(url) if s.name == "headserve_backbone_rows_total")


async def measure(target: str, url: str, callers: int, seconds: float, rounds: int) -> list:
    texts = sentences(2000)
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

        results = await side_by_side(
            [("run_heads", together), ("separate", apart)],
            texts,
            callers,
            seconds,
            rounds,
            probe=lambda: rows_so_far(url),
        )
    for n, one in enumerate(results):  # a call is one sentence, both heads answered
        together_, apart_ = one["run_heads"], one["separate"]
        print(
            f"round {n + 1}: RunHeads {together_['calls_s']:.0f} sentences/s "
            f"({together_['probe_per_call']:.2f} rows each), Encode + Classify "
            f"{apart_['calls_s']:.0f} ({apart_['probe_per_call']:.2f} rows each): "
            f"{together_['calls_s'] / apart_['calls_s']:.2f}"
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
    ratios = [r["run_heads"]["calls_s"] / r["separate"]["calls_s"] for r in rounds]
    out = {"callers": args.callers, "rounds": rounds, "ratios": ratios}
    out["ratio_median"] = statistics.median(ratios)
    write_json(args.json, out)
    print(f"RunHeads / Encode + Classify at {args.callers} callers: {out['ratio_median']:.2f}")


if __name__ == "__main__":
    main()
