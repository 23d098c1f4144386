"""What a benchmark leaves behind: its numbers as JSON (bench/results by default), and the
heads of the Markdown tables it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float as None, so that the JSON written is strict."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, value: Any, *, indent: int = 2, strict: bool = False) -> None:
    """`value` as JSON in `path` (its folder made if missing); `strict`: NaN and infinities
    written as null (`json_safe`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if strict:
        value = json_safe(value)
    path.write_text(json.dumps(value, indent=indent, allow_nan=not strict) + "\n")


def markdown_head(columns: str, align: str = "") -> list[str]:
    """A Markdown table's header row and rule, from its column names joined by " | ";
    `align`: "l" or "r" per column (left where missing), e.g. "lrr"."""
    count = len(columns.split(" | "))
    rule = ("---:" if a == "r" else "---" for a in align.ljust(count, "l"))
    return [f"| {columns} |", "|" + "|".join(rule) + "|"]
