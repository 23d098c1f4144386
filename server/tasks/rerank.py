"""The rerank task: a query and its documents in, the documents in order out (ranking.py):
Ranker.Rerank and its stream, and the Cohere / Jina shape on POST /v1/rerank and /v2/rerank."""

from __future__ import annotations

from typing import Any

from headserve.v1 import ranker_pb2 as pb

from ..calls.pipeline import current
from ..core.engine import Core
from ..core.ranking import rerank
from ..errors import InvalidArgument, TooLarge
from .json_wire import documents, optional
from .task import Route, Task
from .wire import Call, usage_timing


async def answer(core: Core, request: pb.RerankRequest, call: Call) -> pb.RerankResponse:
    o = request.options
    if o.top_n < 0:
        raise InvalidArgument("options.top_n", f"must be at least 0, got {o.top_n}")
    ranking = await rerank(
        core,
        request.query,
        list(request.documents),
        head=o.head or None,
        truncate=o.truncate,
        deadline=call.deadline,
        wait_for_room=call.wait_for_room,
    )
    kept = ranking.order[: o.top_n] if o.top_n else ranking.order
    results = [
        pb.RankedDocument(
            index=index,
            score=score,
            document=request.documents[index] if o.return_documents else "",
        )
        for index, score in kept
    ]
    return pb.RerankResponse(results=results, head=ranking.head, **usage_timing(ranking.outcome))


async def cohere_rerank(core: Core, body: dict[str, Any], call: Call) -> dict[str, Any]:
    """The Cohere / Jina rerank request answered: their shape in, their shape out."""
    query = body.get("query")
    if not isinstance(query, str):
        raise InvalidArgument("query", "must be a string")
    texts = documents(body.get("documents"))
    if len(texts) > core.request_limits.max_request_items:
        raise TooLarge(
            "documents",
            f"{len(texts)} documents, more than this server takes in one request "
            f"({core.request_limits.max_request_items}, --max-request-items); split them",
        )
    top_n = optional(body, "top_n", int)
    if top_n is not None and top_n < 1:
        raise InvalidArgument("top_n", f"must be at least 1, got {top_n}")
    return_documents = optional(body, "return_documents", bool) or False
    truncate = optional(body, "truncate", bool) or False
    ranking = await rerank(
        core,
        query,
        texts,
        head=optional(body, "model", str) or None,
        truncate=truncate,
        deadline=call.deadline,
        wait_for_room=False,
    )
    kept = ranking.order[:top_n] if top_n else ranking.order
    results = []
    for index, score in kept:
        result: dict[str, Any] = {"index": index, "relevance_score": score}
        if return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    tokens = ranking.outcome.input_tokens
    current().count(len(texts), tokens)
    return {
        "id": current().request_id,
        "model": ranking.head,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


TASK = Task(
    "rerank",
    pb.DESCRIPTOR.services_by_name["Ranker"],
    "Rerank",
    answer,
    serving="encode",  # its default ranker
    http=(
        Route("POST", "/v1/rerank", cohere_rerank),
        Route("POST", "/v2/rerank", cohere_rerank),  # Cohere's v2 path, the same shape
    ),
)
