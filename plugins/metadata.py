"""Reading the small metadata files of a model or head folder: head.json, modules.json, a
Pooling module's config.json, config_sentence_transformers.json, a checkpoint's config.json.

They come from wherever an operator points the server, so each must be a regular file (a
link to /dev/zero would be read without end) of at most `MAX_BYTES` (a huge one would be read
whole) and UTF-8. A file that is not one is a MetadataError naming it.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

MAX_BYTES = 1024 * 1024  # such files are a few KB


class MetadataError(ValueError):
    pass


def read_text(path: Path, cap: int = MAX_BYTES) -> str:
    """The file's text (FileNotFoundError when there is none)."""
    info = path.stat()  # follows links: what is read is what counts
    if not stat.S_ISREG(info.st_mode):
        raise MetadataError(f"{path}: not a regular file")
    with path.open("rb") as file:
        data = file.read(cap + 1)
    if len(data) > cap:
        raise MetadataError(f"{path}: larger than {cap:,} bytes; not a model's metadata")
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: not UTF-8 text: {exc}") from exc


def read_json(path: Path, cap: int = MAX_BYTES) -> Any:
    """The file's JSON value."""
    try:
        return json.loads(read_text(path, cap))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MetadataError(f"{path}: not JSON: {exc}") from exc
