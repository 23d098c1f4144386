"""Extractive-QA span decoding: the best answer spans over the windows of one context.

Pure numpy, no model: given each window's start/end logits, which tokens belong
to the context, and their character offsets, return the best spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .tasks import Answer


@dataclass(frozen=True)
class Window:
    start_logits: np.ndarray  # [tokens]
    end_logits: np.ndarray  # [tokens]
    context_mask: np.ndarray  # [tokens] bool: the token is part of the context
    offsets: Sequence[tuple[int, int]]  # code-point offsets into the context
    cls_index: int = 0


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def best_spans(
    context: str,
    windows: Sequence[Window],
    *,
    top_k: int,
    max_answer_length: int,
    allow_no_answer: bool,
) -> tuple[Answer, ...]:
    """Top spans over all windows, scored softmax(start) * softmax(end) within their window.

    The softmax covers the window's context tokens and its CLS token, whose score is the
    "no answer" score (the lowest over windows counts, as in SQuAD 2.0 evaluation).
    Spans found in two overlapping windows are kept once, with the better score.
    """
    best: dict[tuple[int, int], float] = {}
    null_score = 1.0
    for w in windows:
        allowed = w.context_mask.copy()
        allowed[w.cls_index] = True
        neg = np.float64(-1e30)
        p_start = _softmax(np.where(allowed, w.start_logits.astype(np.float64), neg))
        p_end = _softmax(np.where(allowed, w.end_logits.astype(np.float64), neg))
        null_score = min(null_score, float(p_start[w.cls_index] * p_end[w.cls_index]))
        p_start[~w.context_mask] = 0.0
        p_end[~w.context_mask] = 0.0
        scores = np.triu(np.outer(p_start, p_end))
        scores = np.tril(scores, max_answer_length - 1)
        flat = np.argsort(-scores, axis=None)[: max(top_k * 4, top_k + 8)]
        for index in flat:
            s, e = np.unravel_index(index, scores.shape)
            score = float(scores[s, e])
            if score <= 0.0:
                break
            span = (int(w.offsets[s][0]), int(w.offsets[e][1]))
            if score > best.get(span, -1.0):
                best[span] = score
    answers = [Answer(context[a:b], score, a, b) for (a, b), score in best.items()]
    if allow_no_answer and windows:
        answers.append(Answer("", null_score, 0, 0, no_answer=True))
    answers.sort(key=lambda a: -a.score)
    return tuple(answers[:top_k])
