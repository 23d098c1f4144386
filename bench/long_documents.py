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
import functools
import pydoc_data.topics
import statistics
import time
from pathlib import Path

import grpc
import numpy as np
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


# --- retrieval quality: four ways of reading long documents ---------------------------------

DEEP_TOKENS = 512  # a query's sentence starts this many tokens or more into its page


def corpus() -> dict[str, str]:
    """CPython's reference pages of at least 50 words (pydoc_data.topics), by topic."""
    pages: dict[str, str] = {}
    for name, text in sorted(pydoc_data.topics.topics.items()):
        if len(text.split()) >= 50 and text not in pages.values():
            pages[name] = text
    return pages


def deep_queries(pages: dict[str, str], per_page: int = 8) -> dict[str, str]:
    """Sentences from deep inside the long pages (over 1,500 words), each starting at least
    DEEP_TOKENS tokens in: prose, 10 to 40 words, found verbatim in no more pages than it
    names as relevant (qrels: every page that holds it)."""
    import re

    from transformers import AutoTokenizer

    from headserve.server.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    queries: dict[str, str] = {}
    for name, text in pages.items():
        if len(text.split()) <= 1500:
            continue
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        deep_from = offsets["offset_mapping"][DEEP_TOKENS][0]
        sentences = []
        for found in re.finditer(r"[A-Z][^.!?]*[.!?]", text[deep_from:]):
            sentence = " ".join(found.group().split())
            words = sentence.split()
            letters = sum(c.isalpha() or c == " " for c in sentence) / len(sentence)
            if 10 <= len(words) <= 40 and letters > 0.9:
                sentences.append(sentence)
        step = max(1, len(sentences) // per_page)
        for k, sentence in enumerate(sentences[::step][:per_page]):
            queries[f"{name}#{k}"] = sentence
    return queries


def qrels_of(pages: dict[str, str], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    flat = {name: " ".join(text.split()) for name, text in pages.items()}
    return {q: {n: 1 for n, t in flat.items() if sentence in t} for q, sentence in queries.items()}


async def _embeddings(target: str, texts: list[str], options: dict, head: str = "") -> list:
    """Encode `texts` one by one (documents are long), 4 at a time."""
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    ) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        limit = asyncio.Semaphore(4)

        async def one(text: str):  # type: ignore[no-untyped-def]
            async with limit:
                request = encoder_pb2.EncodeRequest(
                    items=[common_pb2.TextInput(text=text)],
                    options=encoder_pb2.EncodeOptions(head=head, **options),
                )
                return (await stub.Encode(request, timeout=600)).results[0]

        return await asyncio.gather(*(one(t) for t in texts))


def _unit(vectors: list) -> np.ndarray:  # type: ignore[type-arg]
    array = np.asarray(vectors, dtype=np.float32)
    return array / np.linalg.norm(array, axis=-1, keepdims=True)


def _token_states(embedding) -> np.ndarray:  # type: ignore[no-untyped-def]
    tensor = embedding.token_states
    return np.frombuffer(tensor.data, dtype=np.float32).reshape(tuple(tensor.shape))


def dense_runs(target: str, pages: dict[str, str], queries: dict[str, str]) -> dict[str, dict]:
    """Scores of every page for every query, by truncation, independent and late chunks."""
    names, texts = list(pages), list(pages.values())
    asked = _unit([e.vector for e in asyncio.run(_embeddings(target, list(queries.values()), {}))])
    ways = {
        "truncation (the first 256 tokens)": {"truncate": True},
        "independent chunks (254 tokens), best chunk": {
            "chunk_mode": encoder_pb2.CHUNK_MODE_INDEPENDENT
        },
        "late chunks (127 tokens), best chunk": {"chunk_mode": encoder_pb2.CHUNK_MODE_LATE},
    }
    runs = {}
    for way, options in ways.items():
        started = time.perf_counter()
        results = asyncio.run(_embeddings(target, texts, options))
        print(f"{way}: {time.perf_counter() - started:.1f} s", flush=True)
        if "chunk_mode" in options:
            chunk_vectors = [_unit([c.vector for c in r.chunks]) for r in results]
            scores = np.stack([(asked @ v.T).max(axis=1) for v in chunk_vectors], axis=1)
        else:
            scores = asked @ _unit([r.vector for r in results]).T
        runs[way] = {
            q: {names[j]: float(scores[i, j]) for j in range(len(names))}
            for i, q in enumerate(queries)
        }
    return runs


@functools.cache
def _tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from headserve.server.loading import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


def pieces(text: str, tokens: int) -> list[str]:
    """`text` cut into pieces of at most `tokens` tokens (ColBERT reads 180 at most)."""
    offsets = _tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = offsets["offset_mapping"]
    return [
        text[spans[k][0] : spans[min(k + tokens, len(spans)) - 1][1]]
        for k in range(0, len(spans), tokens)
    ]


def colbert_folder() -> Path:
    """The ColBERT checkpoint PyLate builds from the packaged MiniLM (its own venv)."""
    import subprocess
    import sys

    from headserve.server.loading import default_model_dir

    folder = HERE / ".cache" / "colbert-minilm"
    if not (folder / "1_Dense").exists():
        python = Path(sys.prefix + "-pylate") / "bin" / "python"
        script = (
            "import sys, torch; from pylate import models; torch.manual_seed(0); "
            "models.ColBERT(model_name_or_path=sys.argv[1], device='cpu').save(sys.argv[2])"
        )
        subprocess.run(
            [python, "-c", script, str(default_model_dir()), str(folder)],
            check=True,
            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
    return folder


def colbert_run(target: str, pages: dict[str, str], queries: dict[str, str]) -> dict:
    """MaxSim of every query against every page: the best of its 170-token pieces."""
    names = list(pages)
    asked = asyncio.run(
        _embeddings(
            target, list(queries.values()), {"prompt_name": "query", "truncate": True}, "colbert"
        )
    )
    query_states = [_token_states(e) for e in asked]
    run: dict[str, dict[str, float]] = {q: {} for q in queries}
    started = time.perf_counter()
    for name in names:
        cut = pieces(pages[name], 170)
        states = [_token_states(e) for e in asyncio.run(_embeddings(target, cut, {}, "colbert"))]
        for q, query in zip(queries, query_states, strict=True):
            run[q][name] = max(float((query @ s.T).max(axis=1).sum()) for s in states)
    print(f"ColBERT: {time.perf_counter() - started:.1f} s", flush=True)
    return run


def retrieval(args: argparse.Namespace) -> None:
    from ranx import Qrels, Run, evaluate

    pages = corpus()
    queries = deep_queries(pages)
    qrels = Qrels(qrels_of(pages, queries))
    runs = {}
    with running(
        [args.headserve, "serve", "--port", "0", "--head", "encode=encode",
         "--max-document-tokens", "20000"],
        r"serving on port (\d+)",
    ) as (_, target):  # fmt: skip
        runs = dense_runs(target, pages, queries)
    colbert = [args.headserve, "serve", str(colbert_folder()), "--port", "0",
               "--head", "colbert=colbert"]  # fmt: skip
    with running(colbert, r"serving on port (\d+)") as (_, target):
        runs["ColBERT MaxSim (170-token pieces), best piece"] = colbert_run(target, pages, queries)
        latencies = asyncio.run(_maxsim_rerank(target, list(queries.values())[:20], pages))
    lines = markdown_head("way | MRR@10 | recall@10", "lrr")
    scores = {}
    for way, run in runs.items():
        got = evaluate(qrels, Run(run), ["mrr@10", "recall@10"])
        scores[way] = got
        lines.append(f"| {way} | {got['mrr@10']:.3f} | {got['recall@10']:.3f} |")
    lines += [
        "",
        f"{len(queries)} queries (sentences from deep in the {len({q.split('#')[0] for q in queries})}"
        f" pages of more than 1,500 words), {len(pages)} pages; ranx MRR@10.",
        "",
        f"MaxSim rerank of 100 documents (ColBERT head, one call a query, {len(latencies)} calls): "
        f"p50 {_p(latencies, 0.5):.0f} ms, p99 {_p(latencies, 0.99):.0f} ms",
    ]
    print("\n".join(lines))
    write_json(
        RESULTS / "long_documents_retrieval.json",
        {"scores": scores, "queries": queries, "rerank_ms": latencies, "table": lines},
    )


async def _maxsim_rerank(target: str, queries: list[str], pages: dict[str, str]) -> list[float]:
    """Rerank 100 documents (pieces of the pages, at most 170 tokens each) for each query, one
    call at a time: each call's latency, in ms."""
    from headserve.v1 import ranker_pb2, ranker_pb2_grpc

    documents = [p for text in pages.values() for p in pieces(text, 170)][:100]
    latencies = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        for query in [queries[0], *queries]:  # the first warms up
            request = ranker_pb2.RerankRequest(
                query=query, documents=documents, options=ranker_pb2.RerankOptions(truncate=True)
            )
            started = time.perf_counter()
            await stub.Rerank(request, timeout=120)
            latencies.append(1e3 * (time.perf_counter() - started))
    return latencies[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("interference", "document", "retrieval"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--headserve", default=HEADSERVE, help="the headserve executable")
    args = parser.parse_args()
    if args.part == "interference":
        interference(args)
    elif args.part == "document":
        document_part(args)
    else:
        retrieval(args)


if __name__ == "__main__":
    main()
