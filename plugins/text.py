"""Tokenizing text items into backbone rows, with the checks every text head needs."""

from __future__ import annotations

from typing import Any

from .contract import BackboneView, InvalidInput, Row
from .tasks import TextItem


def check_text(field: str, text: str) -> None:
    if not text.strip():
        raise InvalidInput(field, "is empty")


def encode_text(
    backbone: BackboneView, item: TextItem, *, truncate: bool, extra: Any = None
) -> tuple[Row, Any]:
    """Tokenize a text or pair into one row; returns the row and the tokenizer's encoding."""
    check_text("text", item.text)
    if item.text_pair is not None:
        check_text("text_pair", item.text_pair)
    encoding = backbone.tokenizer(
        item.text,
        item.text_pair,
        truncation="longest_first" if truncate else False,
        max_length=backbone.max_length if truncate else None,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    ids = encoding["input_ids"]
    if len(ids) > backbone.max_length:
        raise InvalidInput(
            "text",
            f"is {len(ids)} tokens, longer than the model's {backbone.max_length}; "
            "shorten it or set options.truncate",
        )
    types = encoding.get("token_type_ids")
    return Row(tuple(ids), tuple(types) if types is not None else None, extra), encoding
