"""Encode through the OpenAI-style HTTP endpoint against gRPC, side by side (issue 19).

    .venv/bin/python bench/http_vs_grpc.py [--callers 64] [--seconds 15] [--rounds 2]

One `headserve serve --http-port 0` on the packaged model. Each round runs --callers
closed-loop callers for --seconds on gRPC Encode (a grpc.aio stub, one sentence a call),
then the same on POST /v1/embeddings (aiohttp, the same sentences, encoding_format float),
the order alternating between rounds. Prints calls/s, p50 and p99 of each, and HTTP / gRPC
per round and over all. The load generator shares the machine's cores with the server,
and both transports' callers are as lean as their libraries allow (no typed client, no
`openai` package: those measure the client, not the server).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics

import aiohttp
import grpc
from data import sentences
from load import side_by_side
from report import RESULTS, write_json
from servers import served

from headserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc


async def measure(
    target: str, http_port: int, callers: int, seconds: float, rounds: int
) -> list[dict[str, dict[str, float]]]:
    texts = sentences(2000)
    async with (
        grpc.aio.insecure_channel(target) as channel,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=callers),
        ) as session,
    ):
        stub = encoder_pb2_grpc.EncoderStub(channel)
        url = f"http://127.0.0.1:{http_port}/v1/embeddings"

        async def by_grpc(text: str) -> None:
            await stub.Encode(
                encoder_pb2.EncodeRequest(items=[common_pb2.TextInput(text=text)]), timeout=60
            )

        async def by_http(text: str) -> None:
            body = {"input": [text], "model": "encode", "encoding_format": "float"}
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        results = await side_by_side(
            [("grpc", by_grpc), ("http", by_http)], texts, callers, seconds, rounds
        )
    for n, one in enumerate(results):
        print(
            f"round {n + 1}: gRPC {one['grpc']['calls_s']:.0f} calls/s "
            f"(p50 {one['grpc']['p50_ms']:.1f} ms), HTTP {one['http']['calls_s']:.0f} "
            f"calls/s (p50 {one['http']['p50_ms']:.1f} ms): HTTP/gRPC "
            f"{one['http']['calls_s'] / one['grpc']['calls_s']:.2f}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-args", default="", help="more `headserve serve` options")
    parser.add_argument("--json", default=RESULTS / "http_vs_grpc.json")
    args = parser.parse_args()
    serve_args = ["--http-port", "0", *args.serve_args.split()]
    log: list[str] = []
    with served(serve_args, log=log) as (target, _):
        found = re.search(r"OpenAI-style HTTP on port (\d+)", "".join(log))
        assert found, "".join(log)
        rounds = asyncio.run(
            measure(target, int(found.group(1)), args.callers, args.seconds, args.rounds)
        )
    ratios = [r["http"]["calls_s"] / r["grpc"]["calls_s"] for r in rounds]
    out = {"callers": args.callers, "seconds": args.seconds, "rounds": rounds, "ratios": ratios}
    out["ratio_median"] = statistics.median(ratios)
    write_json(args.json, out)
    print(f"HTTP / gRPC at {args.callers} callers: {out['ratio_median']:.2f} (median of rounds)")


if __name__ == "__main__":
    main()
