"""Model families whose position ids follow a rule of their own: the one list of them.

BERT-like models number a row's positions 0, 1, 2...; RoBERTa and its descendants start
after the padding index (padding_idx + 1, so 2 with pad id 1), which also costs them that
many of their position embeddings. Packing gives each packed row its own position ids and
must follow the same rule; the longest input must leave room for it.
"""

from __future__ import annotations

POSITIONS_AFTER_PADDING = frozenset({"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm"})


def first_position(model_type: str, pad_id: int) -> int:
    """The position id of a row's first token."""
    return pad_id + 1 if model_type in POSITIONS_AFTER_PADDING else 0


def usable_positions(model_type: str, position_embeddings: int, pad_id: int) -> int:
    """How many tokens one row can have: the position embeddings after the first position."""
    return position_embeddings - first_position(model_type, pad_id)
