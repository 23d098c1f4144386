"""The frozen backbone's features for a data set, computed once and cached.

classify: one pooled vector per example (the same `pool` the served head uses); on an image
          backbone, its pooled features of each image, decoded and preprocessed as served.
qa:       every window's token states (the same windows the served head makes).

Both go through the server's own Runner (batched, packed rows), so the features a head
is trained on are the ones it is served. The cache key covers the backbone's weight
fingerprint, the task settings and the examples themselves; the files are safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from headserve.plugins.backbones import Backbone
from headserve.plugins.contract import Features, Head, Prepared, Row
from headserve.plugins.qa import windows
from headserve.plugins.tasks import TextItem
from headserve.plugins.text import encode_text
from headserve.plugins.trained import pool

from ..core.limits import RequestLimits
from ..core.runner import Runner, Work
from .data import Answered, ImageFile, Labelled

log = logging.getLogger(__name__)
CHUNK_ROWS = 256  # rows per progress step

Progress = Callable[[int], None]  # called with the rows just done


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "headserve" / "features"


class _Pooled(Head):
    task = "features"

    def __init__(self, pooling: str) -> None:
        self.name = f"features:{pooling}"
        self.pooling = pooling

    def prepare(self, item: Any, options: Any) -> Prepared:
        raise NotImplementedError

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        return list(pool(features, self.pooling).cpu())

    def finish(self, prepared: Prepared, outputs: Sequence[Any], options: Any) -> Any:
        raise NotImplementedError


class _Tokens(_Pooled):
    def __init__(self) -> None:
        self.name = "features:tokens"

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        hidden = features.hidden.float().cpu()
        return [hidden[i, : len(r.input_ids)].clone() for i, r in enumerate(rows)]


def _run(backbone: Backbone, work: Sequence[Work], progress: Progress | None) -> list[Any]:
    runner = Runner(backbone)
    outputs: list[Any] = []
    for start in range(0, len(work), CHUNK_ROWS):
        chunk = work[start : start + CHUNK_ROWS]
        outputs.extend(runner.compute(chunk))
        if progress is not None:
            progress(len(chunk))
    return outputs


@dataclass(frozen=True)
class QAFeatures:
    prepared: list[Prepared]  # per example: its windows' rows and decoding state
    states: list[list[torch.Tensor]]  # per example, per window: [tokens, hidden] float32


class FeatureCache:
    def __init__(self, folder: Path | None, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    def key(self, **settings: Any) -> str:
        blob = json.dumps({"fingerprint": self.fingerprint, **settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.folder is None or not (self.folder / f"{key}.safetensors").is_file():
            return None
        return load_file(str(self.folder / f"{key}.safetensors"))

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{key}.partial"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial))
        partial.replace(self.folder / f"{key}.safetensors")


def classify_features(
    backbone: Backbone,
    examples: Sequence[Labelled],
    pooling: str,
    cache: FeatureCache,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, bool]:
    """[examples, hidden] pooled vectors (truncated to the model's length); and whether cached."""
    items = [e.item for e in examples if isinstance(e.item, TextItem)]
    if len(items) != len(examples):
        raise ValueError("a text backbone trains on text: the data has image rows")
    key = cache.key(
        task="classify",
        pooling=pooling,
        max_length=backbone.max_length,
        items=[(item.text, item.text_pair) for item in items],
    )
    hit = cache.get(key)
    if hit is not None:
        return hit["features"], True
    head = _Pooled(pooling)
    view = backbone.view()
    work = [Work(head, encode_text(view, item, truncate=True)[0]) for item in items]
    vectors = torch.stack(_run(backbone, work, progress))
    cache.put(key, {"features": vectors})
    return vectors, False


def image_features(
    backbone: Backbone,
    examples: Sequence[Labelled],
    cache: FeatureCache,
    progress: Progress | None = None,
    what: str = "pooled",
) -> tuple[torch.Tensor, bool]:
    """[examples, hidden] pooled features of image examples, or ("intermediate") the input of
    the backbone's tail [examples, ...]; and whether cached. Images are decoded a chunk at a
    time (a preprocessed image takes ~600 kB); an unreadable one stops the run, named with
    every other."""
    paths = [e.item.path for e in examples if isinstance(e.item, ImageFile)]
    if len(paths) != len(examples):
        raise ValueError("an image backbone trains on images: the data has text rows")
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    assert backbone.image is not None
    key = cache.key(
        task="classify", pooling=what, image=backbone.image.preprocessing, items=digests
    )
    hit = cache.get(key)
    if hit is not None:
        return hit["features"], True
    head, limit = _Pooled(what), RequestLimits().max_image_pixels
    vectors: list[torch.Tensor] = []
    bad: list[str] = []
    for start in range(0, len(paths), CHUNK_ROWS):
        work = []
        for path in paths[start : start + CHUNK_ROWS]:
            try:
                pixels = backbone.read_image(path.read_bytes(), limit)
            except ValueError as exc:
                bad.append(f"{path}: {exc}")
                continue
            work.append(Work(head, Row((), pixels=pixels)))
        if not bad:
            vectors.extend(_run(backbone, work, progress))
    if bad:
        shown = "\n  ".join(bad[:20])
        raise ValueError(f"{len(bad)} images cannot be read:\n  {shown}")
    stacked = torch.stack(vectors)
    cache.put(key, {"features": stacked})
    return stacked, False


def qa_windows(backbone: Backbone, examples: Sequence[Answered], doc_stride: int) -> list[Prepared]:
    view = backbone.view()
    return [windows(view, e.item, doc_stride) for e in examples]


def qa_features(
    backbone: Backbone,
    examples: Sequence[Answered],
    doc_stride: int,
    cache: FeatureCache,
    progress: Progress | None = None,
) -> tuple[QAFeatures, bool]:
    prepared = qa_windows(backbone, examples, doc_stride)
    key = cache.key(
        task="qa",
        doc_stride=doc_stride,
        max_length=backbone.max_length,
        items=[(e.item.question, e.item.context) for e in examples],
    )
    lengths = [len(r.input_ids) for p in prepared for r in p.rows]
    hit = cache.get(key)
    if hit is not None and hit["lengths"].tolist() == lengths:
        flat = list(torch.split(hit["states"], lengths))
        cached = True
    else:
        head = _Tokens()
        work = [Work(head, row) for p in prepared for row in p.rows]
        flat = _run(backbone, work, progress)
        cache.put(
            key,
            {
                "states": torch.cat(flat),
                "lengths": torch.tensor(lengths, dtype=torch.int64),
            },
        )
        cached = False
    states, position = [], 0
    for p in prepared:
        states.append(flat[position : position + len(p.rows)])
        position += len(p.rows)
    return QAFeatures(prepared, states), cached
