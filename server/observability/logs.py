"""The server's log lines: text for a terminal, or one JSON object per line for a collector.

    --log-format text   2026-12-02 10:00:00,123 INFO headserve.access: call
                        rpc=headserve.v1.Encoder/Encode code=OK items=2 ... request_id=4f0c...
    --log-format json   {"time": "2026-12-02T10:00:00.123+00:00", "level": "INFO",
                         "logger": "headserve.access", "message": "call", "rpc": ...,
                         "code": "OK", "items": 2, ..., "request_id": "4f0c..."}

Every line written while a call is served carries its request id (call_info.CURRENT); a
line from a model worker carries the request ids of the batch it computes (`request_ids`).
Structured fields (the access log's) are passed as `extra={"fields": {...}}`: keys of
the JSON object, `key=value` pairs after a text line's message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

from ..call_info import BATCH, current_request_id

Format = Literal["text", "json"]
FORMATS: tuple[Format, ...] = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def tag_records() -> None:
    """Make every log record carry the request id of the call being served where it is
    made (`request_id`), or the ids of the batch a model worker computes (`request_ids`),
    whatever handler then writes it. Idempotent."""
    make = logging.getLogRecordFactory()
    if not isinstance(make, _Tagged):
        logging.setLogRecordFactory(_Tagged(make))


class _Tagged:
    """A log record factory that adds the call's request id(s) to what `make` makes."""

    def __init__(self, make: Callable[..., logging.LogRecord]) -> None:
        self.make = make

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        """Set only while a call or batch is served: a record made elsewhere keeps its own
        `extra={"request_id": ...}` (Ray Serve's, in a replica), which logging refuses to
        put over an attribute already set."""
        record = self.make(*args, **kwargs)
        request_id = current_request_id()
        if request_id is not None:
            record.request_id = request_id
        request_ids = BATCH.get()
        if request_ids:
            record.request_ids = request_ids
        return record


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields, then the call's request id(s)."""
    fields: dict[str, Any] = dict(getattr(record, "fields", None) or {})
    request_id = getattr(record, "request_id", None)
    if request_id is not None:
        fields["request_id"] = request_id
    request_ids = getattr(record, "request_ids", ())
    if request_ids:
        fields["request_ids"] = list(request_ids)
    return fields


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        pairs = " ".join(f"{k}={_text(v)}" for k, v in _context(record).items())
        return f"{line} {pairs}" if pairs else line


def _text(value: Any) -> str:
    """A value as a text line shows it: quoted (JSON) when empty or holding a space, a quote
    or an equals sign. Called for every field of every access-log line: kept cheap."""
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    text = str(value)
    return json.dumps(text) if not text or _QUOTED.search(text) else text


_QUOTED = re.compile('[ "=]')


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, timezone.utc)
        line: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def quiet_transformers() -> None:
    """transformers' own warnings and progress bars off: a head it loads without weights is
    reported by headserve as untrained, not by transformers' LOAD REPORT table."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def configure_logger(name: str, level: str, fmt: Format = "text") -> None:
    """Log `name`'s records (and its children's) to stderr, leaving the root logger to the
    process that hosts us (a Ray worker's)."""
    tag_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger(name)
    for old in logger.handlers[:]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def configure(level: str, fmt: Format = "text") -> None:
    """Log to stderr at `level` in format `fmt`, replacing any handler set before."""
    tag_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
