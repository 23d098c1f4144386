"""Held-out metrics: accuracy and macro-F1 for classify, exact match and F1 for QA (SQuAD's)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / max(len(gold), 1)


def macro_f1(predicted: Sequence[int], gold: Sequence[int], classes: int) -> float:
    """The mean over classes of F1 (a class never predicted nor present counts 0)."""
    scores = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / max(classes, 1)


def _normalize(text: str) -> list[str]:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, one space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def exact_match(predicted: str, gold: str) -> float:
    return float(_normalize(predicted) == _normalize(gold))


def f1(predicted: str, gold: str) -> float:
    mine, theirs = _normalize(predicted), _normalize(gold)
    common = sum((Counter(mine) & Counter(theirs)).values())
    if not mine or not theirs:
        return float(mine == theirs)
    if common == 0:
        return 0.0
    precision, recall = common / len(mine), common / len(theirs)
    return 2 * precision * recall / (precision + recall)
