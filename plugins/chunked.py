"""Chunked encoding: a long text's chunk vectors, and the text's vector as their mean.

`independent`: every chunk is its own row (the prompt, then the chunk's tokens, inside the
tokenizer's special tokens), pooled as the head pools any text. `late` (late chunking): the
backbone reads the text in windows as long as the model allows (one, if it fits; else windows
half a window apart), and each chunk is the mean of its tokens' states in the window that holds
it with the most context on both sides: a chunk sees its neighbours. Windows no chunk needs are
not computed. Either way a chunk's vector then goes through the head's Dense layers,
normalisation and `dimensions`, and the text's vector is the chunks' token-weighted mean,
normalised when the chunks are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .contract import InvalidInput, Prepared, Row
from .documents import Span, Wrapper, best_window, chunk_size, read_chunks, windows
from .tasks import Chunk, Embedding, EncodeOptions, TextItem

if TYPE_CHECKING:
    from .encode import EncodeHead, Pooled

DEFAULT_CHUNK_TOKENS = 256


@dataclass(frozen=True)
class Window:
    """A late-chunking window row's Row.extra: how to pool and where its chunks lie in it."""

    pooled: Pooled
    spans: tuple[tuple[int, int], ...]  # token positions [p, q) in the row, one per chunk


@dataclass(frozen=True)
class Chunked:
    """A chunked item's Prepared.state: its chunks, and where each chunk's vector comes out
    (the row, and the vector's place among that row's)."""

    spans: tuple[Span, ...]
    places: tuple[tuple[int, int], ...]
    unit: bool  # the chunk vectors are unit length: so is the text's


def prepare(
    head: EncodeHead, item: TextItem, options: EncodeOptions, pooled: Pooled, prompt_text: str
) -> Prepared:
    """`item` as the rows of its chunks (independent) or of its windows (late), each after
    `prompt_text` (the call's prompt, as the head resolved it)."""
    late = options.chunk_mode == "late"
    if late and options.pooling not in ("default", "mean"):
        raise InvalidInput(
            "options.pooling", "late chunking pools each chunk's tokens by their mean"
        )
    tokenizer = head.backbone.tokenizer
    wrapper = Wrapper.of(tokenizer)
    prompt = head.prompt_ids(prompt_text)
    window = (
        head.backbone.max_length
        if late
        else min(head.backbone.max_length, head.cut_at or head.backbone.max_length)
    )
    room = window - wrapper.added - len(prompt)
    if room // 4 < 1:
        raise InvalidInput("options.prompt", f"leaves no room in the model's {window} tokens")
    size = chunk_size(
        options.chunk_tokens,
        options.chunk_overlap,
        # late: a quarter of the window by default, each chunk getting context on both sides
        min(DEFAULT_CHUNK_TOKENS, room // 4) if late else DEFAULT_CHUNK_TOKENS,
        room // 2 if late else room,
        "half the window, less the prompt" if late else "the window less the prompt",
    )
    document, spans = read_chunks(tokenizer, item, size, options.chunk_overlap, options.chunk_by)
    unit = head.unit(pooled)
    if not late:
        rows = tuple(wrapper.row((*prompt, *document.ids[s.first : s.end]), pooled) for s in spans)
        places = tuple((i, 0) for i in range(len(spans)))
        return Prepared(rows, Chunked(spans, places, unit), len(document))
    starts = windows(len(document), room)
    chosen = [best_window(s, starts, room, len(document)) for s in spans]
    rows_of: dict[int, int] = {}  # window -> its row, in document order
    for w in sorted(set(chosen)):
        rows_of[w] = len(rows_of)
    inside: list[list[tuple[int, int]]] = [[] for _ in rows_of]
    places_list = []
    lead = len(wrapper.prefix) + len(prompt)
    for s, w in zip(spans, chosen, strict=True):
        row, start = rows_of[w], starts[w]
        places_list.append((row, len(inside[row])))
        inside[row].append((lead + s.first - start, lead + s.end - start))
    rows = tuple(
        wrapper.row(
            (*prompt, *document.ids[starts[w] : starts[w] + room]),
            Window(pooled, tuple(inside[row])),
        )
        for w, row in rows_of.items()
    )
    return Prepared(rows, Chunked(spans, tuple(places_list), unit), len(document))


def window_vectors(hidden: torch.Tensor, row: Row) -> torch.Tensor:
    """A window row's chunk vectors before the head's Dense layers: [chunks, hidden]."""
    spans: Sequence[tuple[int, int]] = row.extra.spans
    return torch.stack([hidden[p:q].mean(0) for p, q in spans])


def finish(state: Chunked, outputs: Sequence[torch.Tensor]) -> Embedding:
    """The chunks' vectors, and the text's as their token-weighted mean."""
    vectors = [
        outputs[row] if outputs[row].dim() == 1 else outputs[row][slot]
        for row, slot in state.places
    ]
    weights = torch.tensor([float(s.tokens) for s in state.spans])
    stacked = torch.stack(vectors)
    whole = (stacked * weights.unsqueeze(-1)).sum(0) / weights.sum()
    if state.unit:
        whole = torch.nn.functional.normalize(whole, dim=-1)
    chunks = tuple(
        Chunk(v.numpy(), s.start, s.stop, s.tokens)
        for v, s in zip(vectors, state.spans, strict=True)
    )
    return Embedding(whole.numpy(), chunks=chunks)
