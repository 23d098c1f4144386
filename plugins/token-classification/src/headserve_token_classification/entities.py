"""From per-token label scores to entities, as transformers' token-classification pipeline.

`aggregation="none"` keeps one entity per token; `"simple"` merges adjacent tokens
whose tags continue one entity (`B-PER I-PER`), scoring the group by the mean of
its tokens' scores. Tags outside the B-/I- scheme continue any neighbour of the
same label. Labels in `ignore` (usually "O") are not entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Token:
    label: str
    score: float
    start: int
    end: int


def tag(label: str) -> tuple[str, str]:
    """("B" or "I", entity type) of a label; a label without a B-/I- prefix continues."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def tokens(
    probs: np.ndarray,
    labels: Sequence[str],
    offsets: Sequence[tuple[int, int]],
    keep: Sequence[bool],
) -> list[Token]:
    """The best label of each kept (non-special) token, with its probability and span."""
    best = probs.argmax(-1)
    return [
        Token(
            labels[int(best[i])], float(probs[i, best[i]]), int(offsets[i][0]), int(offsets[i][1])
        )
        for i in range(len(best))
        if keep[i]
    ]


def group(found: Sequence[Token]) -> list[Token]:
    """Merge runs of tokens that continue one entity (aggregation "simple")."""
    groups: list[list[Token]] = []
    for token in found:
        bi, kind = tag(token.label)
        if groups and bi != "B" and tag(groups[-1][-1].label)[1] == kind:
            groups[-1].append(token)
        else:
            groups.append([token])
    return [
        Token(
            tag(run[0].label)[1] if run[0].label.startswith(("B-", "I-")) else run[0].label,
            float(np.mean([t.score for t in run])),
            run[0].start,
            run[-1].end,
        )
        for run in groups
    ]


def entities(
    found: Sequence[Token], *, aggregation: str, ignore: Sequence[str], text: str
) -> list[dict[str, object]]:
    """The entities as JSON-ready dicts: label, score, start, end, text."""
    merged = group(found) if aggregation == "simple" else list(found)
    return [
        {
            "label": e.label,
            "score": e.score,
            "start": e.start,
            "end": e.end,
            "text": text[e.start : e.end],
        }
        for e in merged
        if e.label not in ignore
    ]
