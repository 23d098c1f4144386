"""The encode task: Encoder.Encode and its stream, OpenAI's POST /v1/embeddings, and encode
heads in RunHeads. Protobuf (or JSON) in, plain values to the core, protobuf (or JSON) out."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np

from headserve.plugins.tasks import Embedding, EncodeOptions, TextItem
from headserve.v1 import encoder_pb2 as pb
from headserve.v1 import heads_pb2

from ..calls.pipeline import current
from ..core.engine import Core
from ..errors import InvalidArgument, TooLarge
from .json_wire import as_input, is_int, optional
from .task import HeadForm, Route, Task
from .wire import CHUNK_BY, Call, chosen, options, tensor, text_items, usage_timing

_POOLING = {
    pb.POOLING_UNSPECIFIED: "default",
    pb.POOLING_CLS: "cls",
    pb.POOLING_MEAN: "mean",
    pb.POOLING_NONE: "none",
    pb.POOLING_LAST_TOKEN: "lasttoken",
}


_TRUNCATION_SIDE = {
    pb.TRUNCATION_SIDE_UNSPECIFIED: "right",
    pb.TRUNCATION_SIDE_RIGHT: "right",
    pb.TRUNCATION_SIDE_LEFT: "left",
}


_CHUNK_MODE = {
    pb.CHUNK_MODE_UNSPECIFIED: "none",
    pb.CHUNK_MODE_NONE: "none",
    pb.CHUNK_MODE_INDEPENDENT: "independent",
    pb.CHUNK_MODE_LATE: "late",
}


def embedding(e: Embedding) -> pb.Embedding:
    if e.sparse is not None:
        terms = e.sparse
        sparse = pb.SparseVector(
            token_ids=terms.token_ids, tokens=terms.tokens, weights=terms.weights
        )
        return pb.Embedding(sparse=sparse)
    if e.token_states is not None:
        return pb.Embedding(token_states=tensor(e.token_states), tokens=e.tokens)
    assert e.vector is not None
    chunks = [
        pb.EmbeddingChunk(vector=c.vector.tolist(), start=c.start, end=c.end, tokens=c.tokens)
        for c in e.chunks
    ]
    return pb.Embedding(vector=e.vector.tolist(), chunks=chunks)


def encode_options(o: pb.EncodeOptions) -> EncodeOptions:
    """A request's EncodeOptions as the encode heads take them."""
    if o.pooling not in _POOLING:
        raise InvalidArgument("options.pooling", f"unknown pooling {o.pooling}")
    return options(
        EncodeOptions,
        pooling=_POOLING[o.pooling],
        normalize=o.normalize if o.HasField("normalize") else None,
        truncate=o.truncate,
        dimensions=o.dimensions,
        prompt_name=o.prompt_name or None,
        prompt=o.prompt if o.HasField("prompt") else None,
        truncation_side=chosen(o, "truncation_side", _TRUNCATION_SIDE),
        sparse_top_k=o.sparse_top_k,
        sparse_min_weight=o.sparse_min_weight,
        chunk_mode=chosen(o, "chunk_mode", _CHUNK_MODE),
        chunk_tokens=o.chunk_tokens,
        chunk_overlap=o.chunk_overlap,
        chunk_by=chosen(o, "chunk_by", CHUNK_BY),
    )


async def answer(core: Core, request: pb.EncodeRequest, call: Call) -> pb.EncodeResponse:
    o = request.options
    outcome = await core.run(
        "encode",
        [o.head or None],
        text_items(request.items),
        encode_options(o),
        deadline=call.deadline,
        wait_for_room=call.wait_for_room,
    )
    return pb.EncodeResponse(
        results=[embedding(r[0]) for r in outcome.results], **usage_timing(outcome)
    )


# --- OpenAI's embeddings -----------------------------------------------------------------------


async def embeddings(core: Core, body: dict[str, Any], call: Call) -> dict[str, Any]:
    """OpenAI's embeddings request answered: its shape in, its shape out."""
    given = body.get("input")
    size = 0
    if isinstance(given, list):
        size = len(given) + sum(len(t) for t in given if isinstance(t, list))
    # token ids are checked and decoded in Python: many of them, off the event loop
    items = await asyncio.to_thread(_inputs, core, given) if size > 4096 else _inputs(core, given)
    model = optional(body, "model", str)
    head = core.registry.resolve("encode", model or None)
    encoding = optional(body, "encoding_format", str) or "float"
    if encoding not in ("float", "base64"):
        raise InvalidArgument("encoding_format", f"{encoding!r}: choose float or base64")
    dimensions = optional(body, "dimensions", int) or 0
    if "dimensions" in body and dimensions < 1:
        raise InvalidArgument("dimensions", f"must be at least 1, got {body['dimensions']}")
    # OpenAI's shortened vectors are unit length: a head that normalises normalises them
    normalize = bool(getattr(head, "default_normalize", False)) if dimensions else None
    try:
        asked = options(
            EncodeOptions, dimensions=dimensions, normalize=normalize, **_chunking(body)
        )
        outcome = await core.run("encode", [head.name], items, asked, deadline=call.deadline)
    except InvalidArgument as exc:  # an item's field, named as OpenAI's input
        raise as_input(exc) from exc
    data = []
    for index, (result,) in enumerate(outcome.results):
        if result.vector is None:
            raise InvalidArgument(
                "model",
                f"head {head.name!r} returns sparse or per-token vectors, not one vector "
                "per input: call gRPC Encode for those",
            )
        entry = {
            "object": "embedding",
            "index": index,
            "embedding": _json_vector(result.vector, encoding),
        }
        if result.chunks:
            entry["chunks"] = [
                {
                    "embedding": _json_vector(c.vector, encoding),
                    "start": c.start,
                    "end": c.end,
                    "tokens": c.tokens,
                }
                for c in result.chunks
            ]
        data.append(entry)
    tokens = outcome.input_tokens
    current().count(len(items), tokens)  # for the access line
    return {
        "object": "list",
        "data": data,
        "model": head.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


_CHUNKING = {"chunk_mode": str, "chunk_tokens": int, "chunk_overlap": int, "chunk_by": str}
_CHOICES = {"chunk_mode": ("none", "independent", "late"), "chunk_by": ("tokens", "sentences")}


def _chunking(body: dict[str, Any]) -> dict[str, Any]:
    """The chunking options among the body's extra fields (EncodeOptions' names)."""
    asked = {}
    for name, kind in _CHUNKING.items():
        value = optional(body, name, kind)
        if value is None:
            continue
        if name in _CHOICES and value not in _CHOICES[name]:
            raise InvalidArgument(name, f"{value!r}: choose {' or '.join(_CHOICES[name])}")
        asked[name] = value
    return asked


def _json_vector(vector: np.ndarray, encoding: str) -> Any:
    """A vector as OpenAI writes it: a list of floats, or base64 of little-endian float32."""
    vector = np.asarray(vector, dtype="<f4")
    if encoding == "base64":
        return base64.b64encode(vector.tobytes()).decode("ascii")
    return vector.tolist()


def _inputs(core: Core, given: Any) -> list[TextItem]:
    """OpenAI's `input`: a string, a list of strings, a list of token ids, or a list of
    such lists. Token ids are this backbone's own, read back into text."""
    if isinstance(given, str):
        texts: list[Any] = [given]
    elif isinstance(given, list) and given and all(is_int(t) for t in given):
        texts = [given]  # one token array
    elif isinstance(given, list):
        texts = given
    else:
        raise InvalidArgument("input", "give a string, a list of strings or of token arrays")
    if not texts:
        raise InvalidArgument("input", "is empty: send at least one input")
    if len(texts) > core.request_limits.max_request_items:
        raise TooLarge(
            "input",
            f"{len(texts)} inputs, more than this server takes in one request "
            f"({core.request_limits.max_request_items}, --max-request-items); split them",
        )
    return [TextItem(_text(core, index, t)) for index, t in enumerate(texts)]


def _text(core: Core, index: int, given: Any) -> str:
    if isinstance(given, str):
        return given
    most = core.request_limits.max_item_tokens
    if isinstance(given, list) and len(given) > most:  # before looking at any of them
        raise TooLarge(
            f"input[{index}]",
            f"{len(given):,} token ids, more than this server takes for one input "
            f"({most:,}, --max-item-tokens)",
            item=index,
        )
    tokenizer = core.backbone.tokenizer
    if not isinstance(given, list) or not given or not all(is_int(t) for t in given):
        raise InvalidArgument(
            f"input[{index}]", "must be a string or a non-empty array of token ids"
        )
    if tokenizer is None:
        raise InvalidArgument(f"input[{index}]", "this backbone reads images, not tokens")
    vocabulary = len(tokenizer)
    for position, token in enumerate(given):
        if not 0 <= token < vocabulary:
            raise InvalidArgument(
                f"input[{index}][{position}]",
                f"token id {token} is outside this model's vocabulary (0..{vocabulary - 1})",
            )
    return str(tokenizer.decode(given, skip_special_tokens=True))


def _head_result(value: Embedding) -> heads_pb2.HeadResult:
    return heads_pb2.HeadResult(embedding=embedding(value))


TASK = Task(
    "encode",
    pb.DESCRIPTOR.services_by_name["Encoder"],
    "Encode",
    answer,
    serving="encode",
    http=(Route("POST", "/v1/embeddings", embeddings),),
    heads=HeadForm("encode", "encode", encode_options, _head_result),
)
