"""Rerank: a query's documents scored by one head and put in order, best first.

A classify head scores each (query, document) pair as a cross-encoder: the head says which
logit or label is the score (`PairScorer`). An encode head scores the cosine of the query's
vector and each document's; a late-interaction head (ColBERT: `rerank_score` "maxsim") the
MaxSim of the query's token vectors and each document's. The pairs (or the query and the
documents, as two `Core.run`s at once) batch with every other call's rows in the same
backbone passes; the documents alone count against --max-request-items.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from headserve.plugins.colbert import maxsim
from headserve.plugins.tasks import (
    Classification,
    ClassifyOptions,
    Embedding,
    EncodeOptions,
    TextItem,
)

from ..errors import InvalidArgument
from .engine import Core, Outcome


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

    def run(task: str, items: list[TextItem], options: object) -> Awaitable[Outcome]:
        return core.run(
            task, [ranker.name], items, options, deadline=deadline, wait_for_room=wait_for_room
        )

    if ranker.task == "classify":
        if not isinstance(ranker, PairScorer) or ranker.rerank_score is None:
            raise InvalidArgument(
                "options.head",
                f"head {ranker.name!r} cannot rank: a classify head of one logit or two "
                "labels, or one configured with rerank_score=label:NAME, can",
            )
        pairs = [TextItem(query, document) for document in documents]
        outcome = await _named(run("classify", pairs, ClassifyOptions(truncate=truncate)), 0)
        scores = [ranker.relevance(result[0]) for result in outcome.results]
    else:  # the query and the documents as two calls at once: their rows batch together,
        # and the documents alone count against --max-request-items, as the pairs do
        late = getattr(ranker, "rerank_score", None) == "maxsim"  # ColBERT's token vectors
        options = EncodeOptions(normalize=None if late else True, truncate=truncate)
        texts = [TextItem(document) for document in documents]
        asked, answered = await asyncio.gather(
            _named(run("encode", [TextItem(query)], _as(options, "query", late)), None),
            _named(run("encode", texts, _as(options, "document", late)), 0),
            return_exceptions=True,
        )
        for failed in (asked, answered):
            if isinstance(failed, BaseException):
                raise failed
        assert isinstance(asked, Outcome) and isinstance(answered, Outcome)
        if late:
            states = asked.results[0][0].token_states
            scores = [maxsim(states, result[0].token_states) for result in answered.results]
        else:
            vectors = np.stack([_vector(result[0]) for result in answered.results])
            scores = (vectors @ _vector(asked.results[0][0])).tolist()
        outcome = Outcome(
            answered.results,
            asked.input_tokens + answered.input_tokens,
            max(asked.queue_ms, answered.queue_ms),
            max(asked.inference_ms, answered.inference_ms),  # mostly the same batches
        )
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return Ranking(ranker.name, [(i, float(scores[i])) for i in order], outcome)


def _as(options: EncodeOptions, mode: str, late: bool) -> EncodeOptions:
    """A late-interaction head's options for the query or the documents (its prompt names)."""
    return dataclasses.replace(options, prompt_name=mode) if late else options


def _vector(embedding: Embedding) -> np.ndarray:
    assert embedding.vector is not None  # pooled: the default pooling of an encode head
    return embedding.vector


_ITEM = re.compile(r"items\[(\d+)\]\..*")


async def _named(call: Awaitable[Outcome], documents_from: int | None) -> Outcome:
    """`call`'s outcome; an item's error as the caller sent it: documents[i] (the call's
    items from `documents_from` on, or the pairs), or, None, the query."""
    try:
        return await call
    except InvalidArgument as exc:
        if documents_from is None:
            raise InvalidArgument("query", exc.description) from exc
        if exc.field == "items":  # their count
            raise InvalidArgument("documents", exc.description) from exc
        found = _ITEM.fullmatch(exc.field)
        if found is None:
            raise
        index = int(found[1]) - documents_from
        raise InvalidArgument(f"documents[{index}]", exc.description, item=index) from exc
