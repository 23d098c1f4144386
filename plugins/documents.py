"""Texts longer than the backbone's window: a document's tokens, its chunks, its windows.

A head that reads long texts calls these from `prepare` (docs/plugins.md, "Long texts"):

    document = Document.read(tokenizer, text)        the whole text tokenized once, offsets
                                                     in code points of the text sent
    spans = chunk(document, tokenizer, size, ...)    spans of at most `size` tokens, cut on
                                                     token or sentence boundaries
    starts = windows(len(document), room)            windows of `room` tokens over it,
                                                     each half a window after the last
    best_window(span, starts, room, len(document))   the window that holds a span with the
                                                     most context on both sides
    Wrapper.of(tokenizer).row(ids)                   a window's (or a chunk's) tokens as a
                                                     backbone row, the tokenizer's own special
                                                     tokens around them
    TokenWindows.read(tokenizer, text, window)       for a head with an output per token: the
                                                     windows' rows, and `stitch` to take each
                                                     token's output from the window where it
                                                     sits nearest the middle

and sets `Prepared.document_tokens` to the document's length, which the server bounds
(--max-document-tokens). Sentence boundaries come from semantic-text-splitter, which counts
chunk sizes with the backbone's own tokenizer.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerFast

from .contract import InvalidInput, Row
from .tasks import ChunkBy, TextItem
from .text import check_text

_LONGER_THAN_THE_WINDOW = "sequence-length-is-longer-than-the-specified-maximum"


@dataclass(frozen=True)
class Document:
    """A text's tokens without special tokens, and each token's code-point offsets."""

    text: str
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]

    @classmethod
    def read(cls, tokenizer: PreTrainedTokenizerFast, text: str) -> Document:
        # longer than the window on purpose: not worth transformers' warning
        tokenizer.deprecation_warnings[_LONGER_THAN_THE_WINDOW] = True
        encoding = tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, truncation=False
        )
        offsets = tuple((int(a), int(b)) for a, b in encoding["offset_mapping"])
        return cls(text, tuple(encoding["input_ids"]), offsets)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Span:
    """A chunk of a document: tokens [first, end) and the code points [start, stop) they
    cover in the text."""

    first: int
    end: int
    start: int
    stop: int

    @property
    def tokens(self) -> int:
        return self.end - self.first


def chunk(
    document: Document,
    tokenizer: PreTrainedTokenizerFast,
    size: int,
    overlap: int = 0,
    by: ChunkBy = "tokens",
) -> tuple[Span, ...]:
    """The document in chunks of at most `size` tokens. `by="tokens"`: every `size - overlap`
    tokens; `by="sentences"`: the largest runs of sentences (else of words) that fit, each
    starting at most `overlap` tokens into the one before (semantic-text-splitter)."""
    if not document.ids:
        return ()
    if by == "tokens":
        bounds = []
        for first in range(0, len(document), size - overlap):
            bounds.append((first, min(first + size, len(document))))
            if first + size >= len(document):
                break
    else:
        bounds = _sentence_bounds(document, tokenizer, size, overlap)
    return tuple(Span(a, b, document.offsets[a][0], document.offsets[b - 1][1]) for a, b in bounds)


def chunk_size(asked: int, overlap: int, default: int, largest: int, why: str) -> int:
    """The chunk size a call asks for (0: `default`), checked: at most `largest` (`why` says
    what bounds it), more than `overlap`."""
    size = asked or min(default, largest)
    if size > largest:
        raise InvalidInput(
            "options.chunk_tokens", f"{size} is more than this head takes ({largest}: {why})"
        )
    if overlap >= size:
        raise InvalidInput(
            "options.chunk_overlap", f"must be less than the chunk size ({size} tokens)"
        )
    return size


def read_chunks(
    tokenizer: PreTrainedTokenizerFast,
    item: TextItem,
    size: int,
    overlap: int = 0,
    by: ChunkBy = "tokens",
) -> tuple[Document, tuple[Span, ...]]:
    """A text item read as a document and cut in chunks; a pair, an empty text or one of no
    tokens is refused."""
    check_text("text", item.text)
    if item.text_pair is not None:
        raise InvalidInput("text_pair", "a long text is read alone: send one text")
    document = Document.read(tokenizer, item.text)
    spans = chunk(document, tokenizer, size, overlap, by)
    if not spans:
        raise InvalidInput("text", "has no tokens")
    return document, spans


def _sentence_bounds(
    document: Document, tokenizer: PreTrainedTokenizerFast, size: int, overlap: int
) -> list[tuple[int, int]]:
    """Token ranges of the splitter's chunks: the tokens that start inside each."""
    starts = [a for a, _ in document.offsets]
    bounds: list[tuple[int, int]] = []
    for offset, text in _splitter(tokenizer, size, overlap).chunk_indices(document.text):
        first = bisect.bisect_left(starts, offset)
        end = min(bisect.bisect_left(starts, offset + len(text)), first + size)
        if end > first and (not bounds or bounds[-1] != (first, end)):
            bounds.append((first, end))
    return bounds


_SPLITTERS: weakref.WeakKeyDictionary[PreTrainedTokenizerFast, dict[tuple[int, int], Any]] = (
    weakref.WeakKeyDictionary()
)
_SPLITTERS_LOCK = threading.Lock()
_MOST_SPLITTERS = 32  # sizes kept per tokenizer (calls choose them)


def _splitter(tokenizer: PreTrainedTokenizerFast, size: int, overlap: int) -> Any:
    """A sentence splitter counting with `tokenizer` (a copy without truncation or padding:
    a tokenizer's own may cut at 128), made once per size."""
    from semantic_text_splitter import TextSplitter
    from tokenizers import Tokenizer

    with _SPLITTERS_LOCK:
        made = _SPLITTERS.setdefault(tokenizer, {})
        splitter = made.get((size, overlap))
        if splitter is None:
            counting = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            counting.no_truncation()
            counting.no_padding()
            splitter = TextSplitter.from_huggingface_tokenizer(counting, size, overlap=overlap)
            if len(made) >= _MOST_SPLITTERS:
                made.pop(next(iter(made)))
            made[(size, overlap)] = splitter
        return splitter


def windows(length: int, room: int) -> tuple[int, ...]:
    """Where windows of `room` tokens start over a document of `length` tokens: one window if
    it fits, else one every `room // 2` tokens and a last one ending at the document's end.
    Any run of at most `room // 2` tokens then lies whole in some window."""
    if length <= room:
        return (0,)
    step = max(1, room // 2)
    starts = list(range(0, length - room, step))
    starts.append(length - room)
    return tuple(starts)


def best_window(span: Span, starts: Sequence[int], room: int, length: int) -> int:
    """The index of the window that holds `span` whole with the most context on both sides:
    the largest of (tokens before it, tokens after it) at their smaller, where a window edge at
    the document's edge counts as full context; the earliest such window on a tie."""
    best, score = -1, -1
    for index, start in enumerate(starts):
        end = start + room
        if start > span.first or end < span.end:
            continue
        before = span.first - start if start > 0 else room
        after = end - span.end if end < length else room
        if min(before, after) > score:
            best, score = index, min(before, after)
    if best < 0:
        raise ValueError(f"no window holds tokens {span.first}..{span.end}")
    return best


@dataclass(frozen=True)
class TokenWindows:
    """A long text read in windows by a head with an output per token (token classification):
    `rows()` are the windows, and `stitch` gives each of the text's tokens its output from the
    window where it sits nearest the middle (the most context on both sides), so that tokens
    in two windows' overlap are counted once."""

    document: Document
    wrapper: Wrapper
    starts: tuple[int, ...]  # where each window starts, in the document's tokens
    room: int  # a window's tokens, special tokens not counted

    @classmethod
    def read(cls, tokenizer: PreTrainedTokenizerFast, text: str, window: int) -> TokenWindows:
        """`text` in windows of at most `window` tokens, special tokens counted."""
        check_text("text", text)
        wrapper = Wrapper.of(tokenizer)
        room = window - wrapper.added
        document = Document.read(tokenizer, text)
        if not document.ids:
            raise InvalidInput("text", "has no tokens")
        return cls(document, wrapper, windows(len(document), room), room)

    def rows(self, extra: Any = None) -> tuple[Row, ...]:
        ids = self.document.ids
        return tuple(self.wrapper.row(ids[s : s + self.room], extra) for s in self.starts)

    def owners(self) -> list[tuple[int, int]]:
        """Each document token's (window, position in that window's row)."""
        owners = []
        lead = len(self.wrapper.prefix)
        window = 0
        for token in range(len(self.document)):
            while window + 1 < len(self.starts) and token >= self._boundary(window):
                window += 1
            owners.append((window, lead + token - self.starts[window]))
        return owners

    def _boundary(self, window: int) -> int:
        """The first token that sits nearer the middle of window+1 than of `window`."""
        here, there = self.starts[window], self.starts[window + 1]
        # t's context: in `window` before it t - here, after it here + room - 1 - t; in the
        # next, before it t - there. It moves once the next's is the larger (a tie stays).
        return (here + self.room - 1 + there) // 2 + 1

    def stitch(self, outputs: Sequence[Any]) -> list[Any]:
        """Per document token, its window's output at its position (`outputs`: one sequence
        per window row, indexed by position in the row)."""
        return [outputs[window][at] for window, at in self.owners()]


@dataclass(frozen=True)
class Wrapper:
    """The special tokens a tokenizer puts around one text (e.g. [CLS] ... [SEP])."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    token_types: bool  # the model reads token type ids

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerFast) -> Wrapper:
        with _WRAPPERS_LOCK:
            wrapper = _WRAPPERS.get(tokenizer)
            if wrapper is None:
                wrapper = _WRAPPERS[tokenizer] = cls._find(tokenizer)
            return wrapper

    @classmethod
    def _find(cls, tokenizer: PreTrainedTokenizerFast) -> Wrapper:
        inner = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        whole = tokenizer("a")
        ids = list(whole["input_ids"])
        at = next(i for i in range(len(ids) - len(inner) + 1) if ids[i : i + len(inner)] == inner)
        types = "token_type_ids" in whole
        return cls(tuple(ids[:at]), tuple(ids[at + len(inner) :]), types)

    @property
    def added(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def row(self, ids: Sequence[int], extra: Any = None) -> Row:
        """`ids` with the special tokens around them, as one row."""
        full = (*self.prefix, *ids, *self.suffix)
        return Row(full, (0,) * len(full) if self.token_types else None, extra)


_WRAPPERS: weakref.WeakKeyDictionary[PreTrainedTokenizerFast, Wrapper] = weakref.WeakKeyDictionary()
_WRAPPERS_LOCK = threading.Lock()
