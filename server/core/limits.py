"""Per-request limits: what one call may ask of the server, checked before any work.

Every limit is an option of `headserve serve`, reported by GetModelInfo, and named in
the error a caller gets. A request over an item limit is INVALID_ARGUMENT (retrying it
will not help); more streams than allowed is RESOURCE_EXHAUSTED (retry later). The
message-size limit is gRPC's own in both directions; a response that would exceed it
is refused with a clear message before gRPC would fail it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from headserve.plugins.contract import Prepared

from ..errors import InvalidArgument, TooLarge

DECODE_BYTES_PER_PIXEL = 16  # memory an image's decode peaks at, per pixel: measured 12.5
# for an RGBA PNG (decoded, laid on white, made RGB, preprocessed), 8.3 for RGB, 7.3 for a
# palette image (bench/image_decode_memory.py); a quarter more, for decoders not measured


@dataclass(frozen=True)
class Limits:
    """How the scheduler batches: the options of `headserve serve` that shape a batch."""

    max_batch_tokens: int = 8192
    max_batch_items: int = 64
    max_wait_ms: float = 5.0
    max_queue_items: int = 4096
    stream_in_flight_items: int = 256
    workers: int | None = None  # batches computed at once; None: planned by threads.py (or 1)
    worker_nice: int = 19  # how much lower the workers' priority is than the event loop's
    long_call_tokens: int = 2048  # a call with more tokens than this is long: its rows queue
    # this many tokens at a time, and take at most all workers but one while others call
    bulk_batch_tokens: int = 16  # while interactive work is queued or came in the last
    # second, a batch carries at most this many tokens of bulk calls' rows


@dataclass(frozen=True)
class RequestLimits:
    max_request_items: int = 256  # items in one request (one unary call, one stream message)
    max_item_chars: int = 100_000  # characters in one text field of an item
    max_item_tokens: int = 65_536  # backbone tokens one item may cost (every QA window, chunk
    # and late-chunking window counted)
    max_document_tokens: int = 16_384  # tokens of one text read in chunks or windows
    max_message_bytes: int = 16 * 1024 * 1024  # a request or a response, in bytes
    max_concurrent_calls: int = 128  # calls in progress at once, every transport, streams
    # included (the call pipeline refuses the rest)
    max_streams: int = 64  # streams open at once: below max_concurrent_calls, so that idle
    # streams can never take every unary call's place
    max_image_pixels: int = 40_000_000  # width x height of one decoded image (a bomb guard)
    max_image_decode_bytes: int = 1024**3  # memory all the images decoding at once may take,
    # each DECODE_BYTES_PER_PIXEL a pixel (the most one decode was measured to peak at)
    max_head_upload_bytes: int = 8 * 1024 * 1024  # a head artifact sent in a LoadHead call
    # (one message: --max-message-bytes bounds it too)

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"--{f.name.replace('_', '-')} must be at least 1")
        most = self.max_image_pixels * DECODE_BYTES_PER_PIXEL
        if most > self.max_image_decode_bytes:
            raise ValueError(
                f"--max-image-decode-bytes ({self.max_image_decode_bytes:,}) must hold one image "
                f"of --max-image-pixels ({self.max_image_pixels:,}) decoding, "
                f"{DECODE_BYTES_PER_PIXEL} bytes a pixel: {most:,}"
            )
        if self.max_streams >= self.max_concurrent_calls:
            raise ValueError(
                f"--max-streams ({self.max_streams}) must be below --max-concurrent-calls "
                f"({self.max_concurrent_calls}): open streams would leave no room for unary calls"
            )

    def check_items(self, items: Sequence[Any]) -> None:
        """The item count and every text field's length."""
        if len(items) > self.max_request_items:
            raise TooLarge(
                "items",
                f"{len(items)} items, more than this server takes in one request "
                f"({self.max_request_items}, --max-request-items); split the batch",
            )
        for index, item in enumerate(items):
            for name, value in vars(item).items():
                if isinstance(value, str) and len(value) > self.max_item_chars:
                    raise TooLarge(
                        f"items[{index}].{name}",
                        f"is {len(value):,} characters, more than this server takes "
                        f"({self.max_item_chars:,}, --max-item-chars)",
                        item=index,
                    )

    def check_tokens(self, index: int, prepared: Sequence[Prepared]) -> None:
        """The backbone tokens an item costs, over all the heads and windows it needs, and
        the length of a text read in chunks or windows."""
        longest = max((p.document_tokens for p in prepared), default=0)
        if longest > self.max_document_tokens:
            raise TooLarge(
                f"items[{index}].text",
                f"is {longest:,} tokens, more than this server reads in one document "
                f"({self.max_document_tokens:,}, --max-document-tokens); split it",
                item=index,
            )
        tokens = sum(row.length for p in prepared for row in p.rows)
        if tokens > self.max_item_tokens:
            rows = sum(len(p.rows) for p in prepared)
            raise TooLarge(
                f"items[{index}]",
                f"needs {tokens:,} backbone tokens ({rows} rows), more than this server "
                f"takes for one item ({self.max_item_tokens:,}, --max-item-tokens); "
                "shorten it",
                item=index,
            )

    def check_outputs(self, prepared: Sequence[Sequence[Prepared | Any]]) -> None:
        """Before computing: the results the heads know the size of would fit a message."""
        weights = [
            sum(p.output_bytes for p in cells if isinstance(p, Prepared)) for cells in prepared
        ]
        if sum(weights) > self.max_message_bytes:
            heaviest = max(range(len(weights)), key=weights.__getitem__)
            raise InvalidArgument(
                "items",
                f"{len(weights)} items' results would be at least {sum(weights):,} bytes (items"
                f"[{heaviest}] alone {weights[heaviest]:,}), more than this server sends in one "
                f"message ({self.max_message_bytes:,}, --max-message-bytes); send fewer items "
                "per request",
            )

    def check_response(self, size: int) -> None:
        if size > self.max_message_bytes:
            raise InvalidArgument(
                "items",
                f"the response would be {size:,} bytes, more than this server sends in one "
                f"message ({self.max_message_bytes:,}, --max-message-bytes); send fewer items "
                "per request or ask for less (token states, logits)",
            )
