"""How a classifier's logits become the scores it answers: its activation.

A single-label head answers a softmax over its labels; a multi-label head an independent
sigmoid per label; a one-label head (a cross-encoder, a regression head) the sigmoid of its
one logit, as sentence-transformers' CrossEncoder reports it (a softmax over one logit is
always 1.0 and says nothing). The head option `activation=softmax|sigmoid|none` chooses
another; `none` answers the logits themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .tasks import Classification

ACTIVATIONS = ("softmax", "sigmoid", "none")


def activation(options: Mapping[str, str], labels: Sequence[str], multi_label: bool) -> str:
    """A head's activation: its `activation` option, else the default for its labels. A bad
    option, or softmax on a multi-label head, is a ValueError (the head fails to load)."""
    chosen = options.get("activation")
    if chosen is None:
        return "sigmoid" if multi_label or len(labels) == 1 else "softmax"
    if chosen not in ACTIVATIONS:
        raise ValueError(f"activation={chosen!r}: choose from {', '.join(ACTIVATIONS)}")
    if chosen == "softmax" and multi_label:
        raise ValueError("activation=softmax: a multi-label head scores each label by a sigmoid")
    return chosen


def scores(logits: torch.Tensor, activation: str) -> torch.Tensor:
    """The scores of `logits` [..., labels] by `activation`."""
    if activation == "sigmoid":
        return logits.sigmoid()
    if activation == "softmax":
        return logits.softmax(-1)
    return logits


def classified(
    head: str,
    multi_label: bool,
    labels: Sequence[str],
    logits: torch.Tensor,
    activation: str,
    top_k: int,
) -> Classification:
    """A classifier head's answer from its logits [labels]: scores by `activation`, best first,
    each label's logit beside its score."""
    return Classification.ranked(
        head,
        multi_label,
        labels,
        scores(logits, activation).tolist(),
        top_k,
        logits.tolist(),
        activation,
    )
