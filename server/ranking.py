"""Rerank: a query's documents scored by one head and put in order, best first.

A classify head scores each (query, document) pair as a cross-encoder: the head says which
logit or label is the score (`PairScorer`). An encode head scores the cosine of the query's
vector and each document's. Either way it is one `Core.run`: the pairs, or the query and
the documents, batch with every other call's rows in the same backbone passes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from headserve.plugins.tasks import (
    Classification,
    ClassifyOptions,
    Embedding,
    EncodeOptions,
    TextItem,
)

from .core import Core, Outcome
from .errors import InvalidArgument


@runtime_checkable
class PairScorer(Protocol):
    """A classify head that can rank: the relevance score of one pair's classification,
    by its `rerank_score` (None: it cannot tell which of its labels ranks)."""

    rerank_score: str | None

    def relevance(self, classification: Classification) -> float: ...


@dataclass(frozen=True)
class Ranking:
    head: str
    order: list[tuple[int, float]]  # (document index, score), best first
    outcome: Outcome


async def rerank(
    core: Core,
    query: str,
    documents: Sequence[str],
    *,
    head: str | None,
    truncate: bool,
    deadline: float | None,
    wait_for_room: bool,
) -> Ranking:
    """The documents' scores against `query`, best first (equal scores: in their order)."""
    if not query.strip():
        raise InvalidArgument("query", "is empty")
    if not documents:
        raise InvalidArgument("documents", "empty: send at least one document")
    if core.backbone.modality != "text":
        raise InvalidArgument(
            "query", f"this server's backbone ({core.backbone.kind}) reads images: rerank is text"
        )
    ranker = core.registry.resolve_ranker(head)
    try:
        if ranker.task == "classify":
            if not isinstance(ranker, PairScorer) or ranker.rerank_score is None:
                raise InvalidArgument(
                    "options.head",
                    f"head {ranker.name!r} cannot rank: a classify head of one logit or two "
                    "labels, or one configured with rerank_score=label:NAME, can",
                )
            outcome = await core.run(
                "classify",
                [ranker.name],
                [TextItem(query, document) for document in documents],
                ClassifyOptions(truncate=truncate),
                deadline=deadline,
                wait_for_room=wait_for_room,
            )
            scores = [ranker.relevance(result[0]) for result in outcome.results]
        else:
            outcome = await core.run(
                "encode",
                [ranker.name],
                [TextItem(query), *(TextItem(document) for document in documents)],
                EncodeOptions(normalize=True, truncate=truncate),
                deadline=deadline,
                wait_for_room=wait_for_room,
            )
            vectors = np.stack([_vector(result[0]) for result in outcome.results])
            scores = (vectors[1:] @ vectors[0]).tolist()
    except InvalidArgument as exc:
        raise _named(exc, pairs=ranker.task == "classify") from exc
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return Ranking(ranker.name, [(i, float(scores[i])) for i in order], outcome)


def _vector(embedding: Embedding) -> np.ndarray:
    assert embedding.vector is not None  # pooled: the default pooling of an encode head
    return embedding.vector


_ITEM = re.compile(r"items\[(\d+)\]\..*")


def _named(exc: InvalidArgument, *, pairs: bool) -> InvalidArgument:
    """An item's error as the caller sent it: the query, or documents[i]."""
    found = _ITEM.fullmatch(exc.field)
    if found is None:
        return exc
    index = int(found[1])
    if pairs:  # the query was checked first: what is wrong is this pair, its document
        return InvalidArgument(f"documents[{index}]", exc.description, item=index)
    if index == 0:
        return InvalidArgument("query", exc.description)
    return InvalidArgument(f"documents[{index - 1}]", exc.description, item=index - 1)
