"""Rerank latency: one query against 100 documents, one call at a time (issue 19).

    .venv/bin/python bench/rerank.py [--calls 50] [--documents 100] [--head encode]

Starts `headserve serve` on the packaged model, sends --calls Rerank calls one after the other
(each a different VADER snippet as the query, the next --documents snippets as its documents)
through the typed client, and prints p50 / p99 latency in ms and documents scored per second.
The packaged model has no cross-encoder, so its default ranker is the encode head (cosine of
the query's and each document's vectors: 101 rows a call); --serve-args can add one, and
--head pick it.
"""

from __future__ import annotations

import argparse
import statistics
import time

from data import sentences
from load import percentile
from report import RESULTS, write_json
from servers import served

from headserve.client import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--head", default=None, help="the ranking head; default: the server's")
    parser.add_argument("--serve-args", default="", help="more `headserve serve` options")
    parser.add_argument("--json", default=RESULTS / "rerank.json")
    args = parser.parse_args()
    texts = sentences(2000)
    with served(args.serve_args.split()) as (target, _), Client(target, timeout=60) as client:
        for warm in range(3):
            client.rerank(texts[warm], texts[1000 : 1000 + args.documents], head=args.head)
        latencies, inference = [], []
        for n in range(args.calls):
            start = 1 + (n * args.documents) % (len(texts) - args.documents - 1)
            documents = texts[start : start + args.documents]
            began = time.perf_counter()
            result = client.rerank(texts[n], documents, head=args.head, top_n=10)
            latencies.append((time.perf_counter() - began) * 1e3)
            inference.append(result.timing.inference_ms)
    out = {
        "calls": args.calls,
        "documents": args.documents,
        "head": result.head,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "mean_inference_ms": statistics.mean(inference),
        "documents_s": args.documents * args.calls / (sum(latencies) / 1e3),
    }
    write_json(args.json, out)
    print(
        f"rerank, 1 query x {args.documents} documents, head {out['head']}, {args.calls} calls "
        f"one at a time: p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms "
        f"(inference {out['mean_inference_ms']:.1f} ms a call), "
        f"{out['documents_s']:.0f} documents/s"
    )


if __name__ == "__main__":
    main()
