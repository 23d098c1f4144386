"""What the HTTP routes of the tasks read from a JSON body, and how their errors name its
fields (OpenAI's `input`, Cohere's `documents`)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import InvalidArgument


def as_input(exc: InvalidArgument) -> InvalidArgument:
    """`items[3].text` named as `input[3]`, `options.chunk_tokens` as the body's
    `chunk_tokens`; other fields as they are."""
    if exc.field.startswith("options."):
        field = exc.field.removeprefix("options.")
    elif exc.field.startswith("items"):
        field = "input" + exc.field.removeprefix("items").removesuffix(".text")
    else:
        return exc
    return type(exc)(field, exc.description, item=exc.item)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optional(body: dict[str, Any], name: str, kind: type) -> Any:
    """`body[name]` if it is of `kind` (an integral float counts as an int); None if absent
    or null; else InvalidArgument naming it."""
    value = body.get(name)
    if value is None:
        return None
    if kind is int and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise InvalidArgument(name, f"must be {'an' if kind is int else 'a'} {kind.__name__}")


def documents(given: Any) -> list[str]:
    """Cohere's documents (strings) or Jina's and Cohere v1's ({"text": ...} objects)."""
    if not isinstance(given, list) or not given:
        raise InvalidArgument("documents", "give a non-empty list of strings")
    documents = []
    for index, document in enumerate(given):
        if isinstance(document, dict) and isinstance(document.get("text"), str):
            document = document["text"]
        if not isinstance(document, str):
            raise InvalidArgument(f"documents[{index}]", 'must be a string or {"text": ...}')
        documents.append(document)
    return documents
