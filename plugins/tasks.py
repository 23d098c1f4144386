"""Inputs, options and results of the four built-in tasks, as plain values.

The servicers build these from protobuf and turn the results back; the heads
never see protobuf. Options validate themselves and name the bad field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .contract import InvalidInput

Pooling = Literal["default", "cls", "mean", "none"]


@dataclass(frozen=True)
class TextItem:
    text: str
    text_pair: str | None = None


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


@dataclass(frozen=True)
class PredictOptions:
    top_k: int = 5
    return_logits: bool = False
    truncate: bool = False

    def __post_init__(self) -> None:
        _at_least("options.top_k", self.top_k, 1)


@dataclass(frozen=True)
class ClassifyOptions:
    top_k: int = 0  # 0: every label
    truncate: bool = False

    def __post_init__(self) -> None:
        _at_least("options.top_k", self.top_k, 0)


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
