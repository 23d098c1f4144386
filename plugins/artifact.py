"""Head artifacts: a head trained on a frozen backbone, as a folder a server can load.

    DIR/head.json          task, labels, hidden size, pooling, network, the backbone's
                           weight fingerprint, metrics, training settings
    DIR/head.safetensors   the network's weights (no pickle)

`headserve train-head` writes one; the `trained_classify` and `trained_qa` plugins
(trained.py) serve one. The network is the same module on both sides, so the
server's outputs are the trainer's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .metadata import MetadataError, read_json

FORMAT = "headserve-head"
FORMAT_VERSION = 1
META = "head.json"
WEIGHTS = "head.safetensors"
TASKS = ("classify", "qa")


class ArtifactError(ValueError):
    pass


@dataclass(frozen=True)
class Network:
    """The trained module: linear, an MLP with one hidden layer, or "tail": the backbone's
    last block(s) (its own trained copy, BackboneView.tail) and a linear layer on top."""

    kind: str = "linear"  # "linear", "mlp" or "tail"
    hidden: int = 256
    dropout: float = 0.1

    def build(self, inputs: int, outputs: int, tail: nn.Module | None = None) -> nn.Module:
        if self.kind == "tail":
            if tail is None:
                raise ArtifactError("a tail network needs its backbone's tail (an image kind's)")
            return TailClassifier(
                tail, nn.Sequential(nn.Dropout(self.dropout), nn.Linear(inputs, outputs))
            )
        if self.kind == "linear":
            return nn.Sequential(nn.Dropout(self.dropout), nn.Linear(inputs, outputs))
        if self.kind == "mlp":
            return nn.Sequential(
                nn.Dropout(self.dropout),
                nn.Linear(inputs, self.hidden),
                nn.GELU(),
                nn.Dropout(self.dropout),
                nn.Linear(self.hidden, outputs),
            )
        raise ArtifactError(f"unknown network {self.kind!r}: linear, mlp or tail")


class TailClassifier(nn.Module):
    """The backbone's last block(s), retrained, then a linear layer: from the shared pass's
    intermediate features (Features.intermediate) to logits."""

    def __init__(self, tail: nn.Module, top: nn.Module) -> None:
        super().__init__()
        self.tail = tail
        self.top = top

    def forward(self, intermediate: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.top(self.tail(intermediate))
        return out


@dataclass(frozen=True)
class HeadMeta:
    task: str  # "classify" or "qa"
    labels: tuple[str, ...]  # classify: the class names; qa: ()
    hidden_size: int
    pooling: str  # classify: "mean" or "cls" (images: "pooled" or "intermediate"); qa: "tokens"
    network: Network
    fingerprint: str  # of the backbone weights the features came from
    backbone: Mapping[str, Any] = field(default_factory=dict)  # source, model_type, max_length
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> int:
        return len(self.labels) if self.task == "classify" else 2


def save(folder: Path, meta: HeadMeta, module: nn.Module) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(meta)}
    doc["labels"] = list(meta.labels)
    (folder / META).write_text(json.dumps(doc, indent=2) + "\n")


def read_meta(folder: Path) -> HeadMeta:
    try:
        doc = read_json(folder / META)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{folder} is not a head artifact (no {META})") from exc
    except MetadataError as exc:
        raise ArtifactError(str(exc)) from exc
    if not isinstance(doc, dict):
        raise ArtifactError(f"{folder / META}: not a JSON object")
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder / META}: format {doc.get('format')!r} version "
            f"{doc.get('format_version')!r}; this headserve reads {FORMAT} {FORMAT_VERSION}"
        )
    try:
        meta = HeadMeta(
            task=doc["task"],
            labels=tuple(doc["labels"]),
            hidden_size=int(doc["hidden_size"]),
            pooling=doc["pooling"],
            network=Network(**doc["network"]),
            fingerprint=doc["fingerprint"],
            backbone=doc.get("backbone", {}),
            metrics=doc.get("metrics", {}),
            training=doc.get("training", {}),
        )
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{folder / META}: missing or bad field {exc}") from exc
    _check_task(meta, folder / META)
    return meta


# what train-head writes for each task: its pooling, and the metric its held-out data gave
_POOLINGS = {"classify": ("mean", "cls", "pooled", "intermediate"), "qa": ("tokens",)}
_METRIC = {"classify": "accuracy", "qa": "f1"}


def _check_task(meta: HeadMeta, path: Path) -> None:
    """The task agrees with the rest of the artifact's own record, so that an artifact
    relabelled by hand (classify weights called qa, say: two labels make the same shapes)
    is refused rather than served as what it is not."""
    if meta.task not in TASKS:
        raise ArtifactError(f"{path}: task {meta.task!r}; a head artifact is {' or '.join(TASKS)}")
    if meta.pooling not in _POOLINGS[meta.task]:
        raise ArtifactError(
            f"{path}: task {meta.task!r} with pooling {meta.pooling!r}: a {meta.task} head "
            f"pools {' or '.join(_POOLINGS[meta.task])}; was the task changed by hand?"
        )
    if meta.task == "qa" and meta.labels:
        raise ArtifactError(f"{path}: task 'qa' with labels {list(meta.labels)[:3]}: qa has none")
    if meta.task == "classify" and (
        len(meta.labels) < 2 or len(set(meta.labels)) != len(meta.labels)
    ):
        raise ArtifactError(f"{path}: a classify head needs two or more distinct labels")
    others = [
        task for task, metric in _METRIC.items() if task != meta.task and metric in meta.metrics
    ]
    if others and _METRIC[meta.task] not in meta.metrics:
        raise ArtifactError(
            f"{path}: task {meta.task!r}, but its metrics are a {others[0]} head's "
            f"({_METRIC[others[0]]!r}); was the task changed by hand?"
        )


def load(
    folder: Path, tail: Callable[[], nn.Module | None] | None = None
) -> tuple[HeadMeta, nn.Module]:
    """The artifact's metadata and its network, weights loaded, in eval mode (CPU, float32).
    A "tail" network is built on what `tail` makes (BackboneView.tail: a fresh copy of the
    backbone's last block(s)); it is called only for such a network."""
    from safetensors.torch import load_file

    meta = read_meta(folder)
    made = tail() if tail is not None and meta.network.kind == "tail" else None
    module = meta.network.build(meta.hidden_size, meta.outputs, made)
    try:
        module.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (OSError, RuntimeError) as exc:
        raise ArtifactError(f"{folder / WEIGHTS}: {exc}") from exc
    return meta, module.eval().requires_grad_(False)


def fingerprint(folder: Path, keys: Collection[str], prefix: str = "") -> str:
    """A digest of a checkpoint's backbone weights as stored (any serving dtype, any layout).

    `keys` are the backbone module's state-dict names; a stored name may carry the task
    model's `prefix` ("bert.encoder..."). Tensors that are not backbone weights (a task
    head's) do not count.
    """
    return _fingerprint(folder.resolve(), frozenset(keys), prefix)


@lru_cache(maxsize=8)
def _fingerprint(folder: Path, keys: frozenset[str], prefix: str) -> str:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ArtifactError(f"{folder}: no *.safetensors weights to fingerprint")
    tensors: dict[str, tuple[Path, str]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                key = name.removeprefix(f"{prefix}.") if prefix else name
                if key in keys:
                    tensors[key] = (path, name)
    digest = hashlib.sha256()
    for key in sorted(tensors):
        path, name = tensors[key]
        with safe_open(str(path), framework="pt") as f:
            tensor = f.get_tensor(name)
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def backbone_fingerprint(source: Path, module: nn.Module) -> str:
    """The fingerprint of a loaded backbone (`module`): read from its folder's safetensors,
    or, for a backbone that has none (a model loaded by name, e.g. efficientnet-lite0), of
    its weights as loaded, in float32."""
    if source.is_dir() and any(source.glob("*.safetensors")):
        keys = module.state_dict().keys()
        return fingerprint(source, keys, getattr(module, "base_model_prefix", ""))
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().float().cpu().reshape(-1)
        digest.update(f"{name}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()
