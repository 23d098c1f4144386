"""Tokenizing text items into backbone rows, with the checks every text head needs."""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

from transformers import PreTrainedTokenizerFast

from .contract import BackboneView, InvalidInput, Row
from .tasks import TextItem, TruncationSide


def check_text(field: str, text: str) -> None:
    if not text.strip():
        raise InvalidInput(field, "is empty")


_LEFT: weakref.WeakKeyDictionary[PreTrainedTokenizerFast, PreTrainedTokenizerFast] = (
    weakref.WeakKeyDictionary()
)
_LEFT_LOCK = threading.Lock()


def truncating_from(
    tokenizer: PreTrainedTokenizerFast, side: TruncationSide
) -> PreTrainedTokenizerFast:
    """`tokenizer`, or its copy that cuts from the left (made once): a tokenizer's
    truncation side is its own state, which a call cannot change without racing others."""
    if side == "right":
        return tokenizer
    with _LEFT_LOCK:
        left = _LEFT.get(tokenizer)
        if left is None:
            left = copy.deepcopy(tokenizer)
            left.truncation_side = "left"
            _LEFT[tokenizer] = left
        return left


def encode_text(
    backbone: BackboneView,
    item: TextItem,
    *,
    truncate: bool,
    extra: Any = None,
    truncation_side: TruncationSide = "right",
    cut_at: int | None = None,
    limit: bool = True,
) -> tuple[Row, Any]:
    """Tokenize a text or pair into one row; returns the row and the tokenizer's encoding.
    `truncation_side`: which end `truncate` cuts; `cut_at`: where, if sooner than the
    model's window (a checkpoint trained on shorter inputs); `limit=False`: a row longer than
    the window is returned, for the caller to cut its own way."""
    check_text("text", item.text)
    if item.text_pair is not None:
        check_text("text_pair", item.text_pair)
    tokenizer = truncating_from(backbone.tokenizer, truncation_side)
    encoding = tokenizer(
        item.text,
        item.text_pair,
        truncation="longest_first" if truncate else False,
        max_length=min(backbone.max_length, cut_at or backbone.max_length) if truncate else None,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    ids = encoding["input_ids"]
    if limit and len(ids) > backbone.max_length:
        raise InvalidInput(
            "text",
            f"is {len(ids)} tokens, longer than the model's {backbone.max_length}; "
            "shorten it or set options.truncate",
        )
    types = encoding.get("token_type_ids")
    return Row(tuple(ids), tuple(types) if types is not None else None, extra), encoding
