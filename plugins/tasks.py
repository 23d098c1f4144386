"""Inputs, options and results of the four built-in tasks, as plain values.

The task descriptions (server/tasks/) build these from protobuf and turn the results back; the heads
never see protobuf. Options validate themselves and name the bad field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .contract import InvalidInput, Pixels

Pooling = Literal["default", "cls", "mean", "none", "lasttoken"]
TruncationSide = Literal["right", "left"]
ChunkMode = Literal["none", "independent", "late"]
ChunkBy = Literal["tokens", "sentences"]


@dataclass(frozen=True)
class TextItem:
    text: str
    text_pair: str | None = None


@dataclass(frozen=True)
class ImageItem:
    """An encoded image (PNG, JPEG, GIF, WebP, BMP), for a backbone of modality "image".

    The server decodes and preprocesses it before any head sees it: `pixels` is its row's
    input, made once for every head of the call."""

    data: bytes = field(repr=False)
    pixels: Pixels | None = None


@dataclass(frozen=True)
class QAItem:
    question: str
    context: str


def _at_least(field: str, value: int, low: int) -> None:
    if value < low:
        raise InvalidInput(field, f"must be at least {low}, got {value}")


@dataclass(frozen=True)
class EncodeOptions:
    pooling: Pooling = "default"
    normalize: bool | None = None
    truncate: bool = False
    dimensions: int = 0  # keep the first N values of a pooled vector; 0: all
    prompt_name: str | None = None  # a prompt the head's checkpoint names; None: its default
    prompt: str | None = None  # a prompt written out; "" for none
    truncation_side: TruncationSide = "right"
    sparse_top_k: int = 0  # a sparse head: its heaviest terms; 0: all over sparse_min_weight
    sparse_min_weight: float = 0.0
    # a long text in chunks (documents.py): each chunk's vector, and the text's as their mean
    chunk_mode: ChunkMode = "none"
    chunk_tokens: int = 0  # at most this many tokens a chunk; 0: the head's default
    chunk_overlap: int = 0  # tokens a chunk shares with the one before it
    chunk_by: ChunkBy = "tokens"

    def __post_init__(self) -> None:
        _at_least("options.dimensions", self.dimensions, 0)
        _at_least("options.chunk_tokens", self.chunk_tokens, 0)
        _at_least("options.chunk_overlap", self.chunk_overlap, 0)
        if self.chunk_mode == "none":
            for name in ("chunk_tokens", "chunk_overlap"):
                if getattr(self, name):
                    raise InvalidInput(f"options.{name}", "needs options.chunk_mode")
            if self.chunk_by != "tokens":
                raise InvalidInput("options.chunk_by", "needs options.chunk_mode")
        elif self.pooling == "none":
            raise InvalidInput("options.chunk_mode", "pools chunks: not with POOLING_NONE")
        if self.chunk_tokens and self.chunk_overlap >= self.chunk_tokens:
            raise InvalidInput(
                "options.chunk_overlap",
                f"must be less than chunk_tokens ({self.chunk_tokens}), got {self.chunk_overlap}",
            )
        _at_least("options.sparse_top_k", self.sparse_top_k, 0)
        if not math.isfinite(self.sparse_min_weight) or self.sparse_min_weight < 0:
            raise InvalidInput(
                "options.sparse_min_weight", f"must be a number >= 0, got {self.sparse_min_weight}"
            )
        if self.prompt_name and self.prompt is not None:
            raise InvalidInput("options.prompt", "give prompt or prompt_name, not both")
        if self.dimensions and self.pooling == "none":
            raise InvalidInput("options.dimensions", "cuts pooled vectors: not with POOLING_NONE")


@dataclass(frozen=True)
class PredictOptions:
    top_k: int = 5
    return_logits: bool = False
    truncate: bool = False

    def __post_init__(self) -> None:
        _at_least("options.top_k", self.top_k, 1)


LongText = Literal["none", "mean", "max", "first"]


@dataclass(frozen=True)
class ClassifyOptions:
    top_k: int = 0  # 0: every label
    truncate: bool = False
    # a long text in chunks (documents.py), each classified; the text's logits their mean or
    # max, or the first chunk's alone
    long_text: LongText = "none"
    chunk_tokens: int = 0  # 0: as many as fit the window
    chunk_overlap: int = 0
    chunk_by: ChunkBy = "tokens"
    return_chunks: bool = False  # each chunk's labels too

    def __post_init__(self) -> None:
        _at_least("options.top_k", self.top_k, 0)
        _at_least("options.chunk_tokens", self.chunk_tokens, 0)
        _at_least("options.chunk_overlap", self.chunk_overlap, 0)
        if self.long_text == "none":
            for name in ("chunk_tokens", "chunk_overlap", "return_chunks"):
                if getattr(self, name):
                    raise InvalidInput(f"options.{name}", "needs options.long_text")
            if self.chunk_by != "tokens":
                raise InvalidInput("options.chunk_by", "needs options.long_text")


@dataclass(frozen=True)
class QAOptions:
    top_k: int = 1
    max_answer_length: int = 30
    doc_stride: int = 128
    allow_no_answer: bool = False

    def __post_init__(self) -> None:
        _at_least("options.top_k", self.top_k, 1)
        _at_least("options.max_answer_length", self.max_answer_length, 1)
        _at_least("options.doc_stride", self.doc_stride, 1)


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray | None  # pooled: [hidden_size]
    token_states: np.ndarray | None = None  # pooling "none": [tokens, hidden_size]
    tokens: tuple[str, ...] = ()
    sparse: SparseVector | None = None  # a sparse head's terms (vector is then None)
    chunks: tuple[Chunk, ...] = ()  # chunked encoding: each chunk's; `vector` is then their
    # token-weighted mean


@dataclass(frozen=True)
class Chunk:
    """One chunk of a long text: its vector, the code points [start, end) of the text it
    covers, and its tokens."""

    vector: np.ndarray
    start: int
    end: int
    tokens: int


@dataclass(frozen=True)
class SparseVector:
    """Vocabulary terms and their weights, heaviest first."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class Candidate:
    token_id: int
    token: str
    probability: float


@dataclass(frozen=True)
class MaskPrediction:
    position: int
    span: tuple[int, int]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class TokenPrediction:
    masks: tuple[MaskPrediction, ...]
    logits: np.ndarray | None = None  # [tokens, vocab_size]


@dataclass(frozen=True)
class Classification:
    head: str
    multi_label: bool
    labels: tuple[tuple[str, float], ...]  # best first
    logits: tuple[float, ...] = ()  # every label's, in the head's label order (when it has them)
    activation: str = ""  # "softmax", "sigmoid" or "none" (how logits became `labels`)
    label_logits: tuple[float, ...] = ()  # the logit of each of `labels`, in their order
    chunks: tuple[ChunkLabels, ...] = ()  # a long text's chunks, when asked

    @classmethod
    def ranked(
        cls,
        head: str,
        multi_label: bool,
        names: Sequence[str],
        probs: Sequence[float],
        top_k: int = 0,
        logits: Sequence[float] = (),
        activation: str = "",
    ) -> Classification:
        """The labels by probability, best first; the `top_k` best when it is not 0."""
        order = sorted(range(len(names)), key=lambda i: -float(probs[i]))
        if top_k:
            order = order[:top_k]
        ranked = tuple((names[i], float(probs[i])) for i in order)
        every = tuple(float(v) for v in logits)
        picked = tuple(every[i] for i in order) if every else ()
        return cls(head, multi_label, ranked, every, activation, picked)


@dataclass(frozen=True)
class ChunkLabels:
    """One chunk of a long text, classified alone: the code points [start, end) it covers,
    its tokens, and its classification."""

    start: int
    end: int
    tokens: int
    classification: Classification


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    start: int
    end: int
    no_answer: bool = False


@dataclass(frozen=True)
class QuestionAnswer:
    answers: tuple[Answer, ...]
    windows: int
