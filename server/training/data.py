"""Reading training data in formats users already have, with every bad row named by line.

classify: JSONL objects or CSV rows with `text`, `label` and optionally `text_pair`; for an
          image backbone, with `image` (a file path, relative to the data file's folder)
          instead of `text`, or a folder holding one folder of images per class (the
          common ImageFolder layout: DIR/cat/1.jpg, DIR/dog/2.png...).
qa:       SQuAD-style JSONL: `question`, `context`, and the answer as `answer_text` +
          `answer_start`, or `answers: {"text": [...], "answer_start": [...]}` (the first
          answer is used), or `answer: {"text": ..., "answer_start": ...}`.

Other column names are mapped onto these with `Columns` (`--text-column`, `--label-column`).
Nothing is dropped silently: bad rows raise `DataError` listing them, unless the caller
asks to skip them, and then they are still reported; a file in which no row has a column the
task needs says so, naming the columns it has and the option that maps them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from headserve.plugins.tasks import QAItem, TextItem

MAX_SHOWN = 20


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageFile:
    """An image example: the file is read when its features are computed."""

    path: Path


@dataclass(frozen=True)
class Labelled:
    item: TextItem | ImageFile
    label: str
    line: int  # a row's line; in an image folder, the file's place in sorted order (1-based)


@dataclass(frozen=True)
class Answered:
    item: QAItem
    answer: str
    start: int  # code points into the context
    line: int


@dataclass(frozen=True)
class Columns:
    """Which of the data's columns holds each field the task reads."""

    text: str = "text"
    label: str = "label"

    def renamed(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with its columns under the names the task reads."""
        mapped = {self.text: "text", self.label: "label"}
        if all(k == v for k, v in mapped.items()):
            return record
        # a column that has a task field's name but holds another field is not read
        shadowed = set(mapped.values()) - set(mapped)
        return {mapped.get(k, k): v for k, v in record.items() if k not in shadowed}


OPTION_OF = {"text": "--text-column", "label": "--label-column"}


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class DataError(ValueError):
    def __init__(self, path: Path, bad: list[BadRow], total: int) -> None:
        shown = "\n".join(f"  {b}" for b in bad[:MAX_SHOWN])
        more = f"\n  ... and {len(bad) - MAX_SHOWN} more" if len(bad) > MAX_SHOWN else ""
        fix = (
            "fix them"
            if len(bad) == total
            else "fix them, or pass --skip-bad-rows to train on the rest"
        )
        super().__init__(f"{path}: {len(bad)} of {total} rows are bad:\n{shown}{more}\n{fix}")
        self.bad = bad


@dataclass(frozen=True)
class Loaded:
    examples: list[Any]  # Labelled or Answered
    bad: list[BadRow]  # skipped (only with skip_bad=True)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    """(line number, record or why it is not one) for each non-blank row."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, BadRow(number, f"not JSON: {exc.msg}")
                    continue
                if not isinstance(record, dict):
                    yield number, BadRow(number, "not a JSON object")
                    continue
                yield number, record
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                number = reader.line_num
                columns = len(reader.fieldnames or [])
                if None in row:
                    yield number, BadRow(number, f"more cells than the header's {columns} columns")
                    continue
                if any(v is None for v in row.values()):
                    yield number, BadRow(number, f"fewer cells than the header's {columns} columns")
                    continue
                yield number, {k.strip(): v for k, v in row.items() if k is not None}
    else:
        raise ValueError(f"{path}: unknown data format {suffix!r}: use .jsonl, .csv or .tsv")


def _text(record: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None or (value == "" and not required):
        if required:
            raise ValueError(f"missing {key!r}")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    if not value.strip():
        raise ValueError(f"{key!r} is empty")
    return value


def _label(record: dict[str, Any]) -> str:
    label = record.get("label")
    if isinstance(label, bool) or not isinstance(label, str | int) or str(label).strip() == "":
        raise ValueError("missing 'label' (a string or an integer)")
    return str(label).strip()


def _labelled_image(record: dict[str, Any], line: int, folder: Path) -> Labelled:
    name = _text(record, "image")
    assert name is not None
    path = folder / name
    if not path.is_file():
        raise ValueError(f"image {name!r}: no such file ({path})")
    return Labelled(ImageFile(path), _label(record), line)


def image_folder(folder: Path) -> Loaded:
    """DIR/LABEL/IMAGE files: one class per sub-folder, files in sorted order."""
    examples: list[Labelled] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                examples.append(Labelled(ImageFile(path), class_dir.name, len(examples) + 1))
    if not examples:
        raise ValueError(
            f"{folder}: no images in class folders (DIR/LABEL/NAME with a suffix among "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    return Loaded(examples, [])


def _labelled(record: dict[str, Any], line: int) -> Labelled:
    text = _text(record, "text")
    pair = _text(record, "text_pair", required=False)
    label = _label(record)
    assert text is not None
    return Labelled(TextItem(text, pair), label, line)


def _answered(record: dict[str, Any], line: int) -> Answered:
    question = _text(record, "question")
    context = _text(record, "context")
    assert question is not None and context is not None
    if "answers" in record:
        answers = record["answers"]
        if not isinstance(answers, dict) or not answers.get("text"):
            raise ValueError("'answers' needs non-empty 'text' and 'answer_start' lists")
        text, start = answers["text"][0], (answers.get("answer_start") or [None])[0]
    elif isinstance(record.get("answer"), dict):
        text, start = record["answer"].get("text"), record["answer"].get("answer_start")
    else:
        text, start = record.get("answer_text"), record.get("answer_start")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("missing the answer text")
    if isinstance(start, bool) or not isinstance(start, int):
        raise ValueError("missing 'answer_start' (an integer)")
    if context[start : start + len(text)] != text:
        raise ValueError(
            f"the answer {text!r} is not at answer_start {start} of the context "
            f"(found {context[start : start + len(text)]!r})"
        )
    return Answered(QAItem(question, context), text, start, line)


def _missing_column(path: Path, bad: list[BadRow], columns: Columns, seen: set[str]) -> None:
    """Raise the one error that says so when every row misses the same column."""
    reasons = {b.reason for b in bad}
    if len(reasons) != 1:
        return
    (reason,) = reasons
    for field, option in OPTION_OF.items():
        name = getattr(columns, field)
        if reason.startswith(f"missing {field!r}") and name not in seen:
            has = ", ".join(sorted(seen)) or "none"
            raise ValueError(
                f"{path}: no row has a {name!r} column (its columns: {has}); name the column "
                f"that holds the {field} with {option} NAME"
            )


def read(
    path: Path,
    task: str,
    *,
    skip_bad: bool = False,
    images: bool = False,
    columns: Columns = Columns(),
) -> Loaded:
    """The examples of `path`; `images`: classify examples are images (an image backbone)."""
    if images and task != "classify":
        raise ValueError(f"--task {task}: an image backbone trains classify heads only")
    if path.is_dir():
        if not images:
            raise ValueError(f"{path} is a folder: image folders are for image backbones")
        return image_folder(path)
    parse: Callable[[dict[str, Any], int], Any] = {"classify": _labelled, "qa": _answered}[task]
    if images:
        parse = partial(_labelled_image, folder=path.parent)
    if task == "qa" and path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise ValueError(f"{path}: QA data is SQuAD-style JSONL")
    examples, bad, total, seen = [], [], 0, set[str]()
    for line, record in _records(path):
        total += 1
        if isinstance(record, BadRow):
            bad.append(record)
            continue
        seen.update(record)
        try:
            examples.append(parse(columns.renamed(record), line))
        except ValueError as exc:
            bad.append(BadRow(line, str(exc)))
    if not examples and bad:
        _missing_column(path, bad, columns, seen)
    if bad and not skip_bad:
        raise DataError(path, bad, total)
    if not examples:
        raise ValueError(f"{path}: no usable rows")
    return Loaded(examples, bad)
