"""`headserve train-head`: data -> cached backbone features -> a trained network -> artifact."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from headserve.plugins import artifact
from headserve.plugins.artifact import HeadMeta, Network
from headserve.plugins.backbones import LoadOptions

from ..backbones.kinds import choose_kind
from . import data
from .data import Columns
from .features import (
    FeatureCache,
    classify_features,
    default_cache_dir,
    image_features,
    qa_features,
)
from .fit import FitSettings, fit
from .tasks import ClassifyData, QAData, label_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    task: str  # "classify" or "qa"
    data: Path
    out: Path
    model: Path  # a backbone folder or name, as `headserve serve` takes it
    network: Network = Network()
    fit: FitSettings = FitSettings()
    val_fraction: float = 0.2
    pooling: str = "mean"  # classify
    doc_stride: int = 128  # qa
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: no cache
    skip_bad_rows: bool = False
    columns: Columns = Columns()
    device: str | None = None
    progress: bool = True
    backbone_kind: str | None = None  # None: the first kind that claims `model`


@dataclass(frozen=True)
class TrainReport:
    out: Path
    meta: HeadMeta
    examples: int
    skipped: Sequence[data.BadRow]
    train: Sequence[int]  # example indices
    val: Sequence[int]
    features_cached: bool
    seconds: dict[str, float]

    def summary(self) -> list[str]:
        """What `headserve train-head` prints: the run, its epochs and its scores, with
        what each number is measured against."""
        meta, training = self.meta, self.meta.training
        metrics = {k: v for k, v in meta.metrics.items() if isinstance(v, float)}
        scores = ", ".join(
            f"{k} {v:.3f}"
            for k, v in metrics.items()
            if not k.startswith(("untrained_", "val_", "majority_"))
        )
        untrained = ", ".join(
            f"{k.removeprefix('untrained_')} {v:.3f}"
            for k, v in metrics.items()
            if k.startswith("untrained_")
        )
        baselines = [f"the same head before training (random weights): {untrained}"]
        if "majority_accuracy" in metrics:
            baselines.append(
                f"always the most common label: accuracy {metrics['majority_accuracy']:.3f}"
            )
        features = "from cache" if self.features_cached else "computed"
        lines = [
            f"trained a {meta.task} head ({meta.network.kind}) on {len(self.train)} examples, "
            f"held out {len(self.val)}; features {features}",
            _epochs(
                training["best_epoch"],
                training["epochs_run"],
                training["epochs"],
                training["patience"],
            ),
            f"held-out: {scores} (loss {metrics['val_loss']:.4f})",
            f"baselines: {'; '.join(baselines)}",
        ]
        if self.skipped:
            shown = ", ".join(str(b.line) for b in self.skipped[:20])
            lines.append(f"skipped {len(self.skipped)} bad rows (lines {shown})")
        lines.append(f"wrote {self.out}; serve it with: headserve serve --head NAME={self.out}")
        return lines


def _epochs(best: int, run: int, most: int, patience: int) -> str:
    if run < most:
        return (
            f"epochs: stopped early after {run} of at most {most}, {patience} (--patience) "
            f"without a lower held-out loss; kept epoch {best}"
        )
    if best == run:
        return (
            f"epochs: all {most} run and the held-out loss still fell at the last one, so early "
            "stopping never fired; more --epochs may help"
        )
    return f"epochs: all {most} run; kept epoch {best}, the lowest held-out loss"


def split(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) example indices, shuffled by `seed`."""
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, not {fraction}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(count * fraction))
    if count - n_val < 1:
        raise ValueError(f"{count} examples are too few to hold {n_val} out for validation")
    return sorted(order[n_val:]), sorted(order[:n_val])


def _bar(total: int | None, unit: str, enabled: bool, desc: str) -> Any:
    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, leave=False)


def train_head(options: TrainOptions) -> TrainReport:
    if options.task not in artifact.TASKS:
        raise ValueError(f"--task must be one of {', '.join(artifact.TASKS)}")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    kind = choose_kind(str(options.model), options.backbone_kind)
    backbone = kind.load(str(options.model), LoadOptions(device=options.device))
    images = backbone.modality == "image"
    loaded = data.read(
        options.data,
        options.task,
        skip_bad=options.skip_bad_rows,
        images=images,
        columns=options.columns,
    )
    for bad in loaded.bad:
        log.warning("%s: skipped %s", options.data, bad)
    examples = loaded.examples
    fingerprint = artifact.backbone_fingerprint(backbone.source, backbone.view().module)
    cache = FeatureCache(options.cache_dir, fingerprint)
    train, val = split(len(examples), options.val_fraction, options.fit.seed)
    timings["load"] = time.perf_counter() - started

    started = time.perf_counter()
    torch.manual_seed(options.fit.seed)
    hidden = backbone.hidden_size
    tail: torch.nn.Module | None = None
    if options.task == "classify":
        if options.pooling not in ("mean", "cls"):
            raise ValueError(f"--pooling must be mean or cls, not {options.pooling!r}")
        labels = label_names([e.label for e in examples])
        if len(labels) < 2:
            raise ValueError(f"{options.data}: one label only ({labels[0]!r}); need two or more")
        unit = "image" if images else "text"
        tail = backbone.tail() if options.network.kind == "tail" else None
        if options.network.kind == "tail" and tail is None:
            raise ValueError(
                f"--network tail: the {backbone.kind} backbone offers no trainable tail "
                "(efficientnet-lite does)"
            )
        with _bar(len(examples), unit, options.progress, "features") as bar:
            if images:
                what = "intermediate" if tail is not None else "pooled"
                features, cached = image_features(backbone, examples, cache, bar.update, what)
            else:
                features, cached = classify_features(
                    backbone, examples, options.pooling, cache, bar.update
                )
        index = {label: i for i, label in enumerate(labels)}
        task_data: ClassifyData | QAData = ClassifyData(
            features, torch.tensor([index[e.label] for e in examples]), labels
        )
        train_units, val_units = train, val
        outputs = len(labels)
        pooling = ("intermediate" if tail is not None else "pooled") if images else options.pooling
    else:
        with _bar(None, "window", options.progress, "features") as bar:  # windows: not known yet
            qa, cached = qa_features(backbone, examples, options.doc_stride, cache, bar.update)
        task_data = QAData.build(qa, examples)
        train_units, val_units = task_data.windows_of(train), task_data.windows_of(val)
        labels, outputs, pooling = (), 2, "tokens"
    timings["features"] = time.perf_counter() - started

    started = time.perf_counter()
    torch.manual_seed(options.fit.seed)
    module = options.network.build(hidden, outputs, tail)
    untrained = task_data.metrics(module, val)
    with _bar(options.fit.epochs, "epoch", options.progress, "training") as bar:

        def step(epoch: int, record: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(
                train_loss=f"{record['train_loss']:.4f}", val_loss=f"{record['val_loss']:.4f}"
            )

        result = fit(module, train_units, val_units, task_data.loss(), options.fit, progress=step)
    timings["training"] = time.perf_counter() - started
    held_out = task_data.metrics(result.module, val)
    extra: dict[str, Any] = {}
    if isinstance(task_data, ClassifyData):
        extra["majority_accuracy"] = task_data.majority_accuracy(train, val)
    meta = HeadMeta(
        task=options.task,
        labels=labels,
        hidden_size=hidden,
        pooling=pooling,
        network=options.network,
        fingerprint=fingerprint,
        backbone={
            "source": str(backbone.source),
            "model_type": backbone.config.model_type,
            "max_length": backbone.max_length,
        },
        metrics={
            **held_out,
            **{f"untrained_{k}": v for k, v in untrained.items()},
            **extra,
            "val_loss": result.history[result.best_epoch - 1]["val_loss"],
            "held_out_examples": len(val),
        },
        training={
            "data": str(options.data),
            "examples": len(examples),
            "skipped_rows": len(loaded.bad),
            "train_examples": len(train),
            "val_fraction": options.val_fraction,
            "seed": options.fit.seed,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            **{k: v for k, v in asdict(options.fit).items() if k != "seed"},
            **({"doc_stride": options.doc_stride} if options.task == "qa" else {}),
        },
    )
    artifact.save(options.out, meta, result.module)
    return TrainReport(options.out, meta, len(examples), loaded.bad, train, val, cached, timings)
