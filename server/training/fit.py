"""Training a head's network on cached features: mini-batches, AdamW, early stopping.

The loop is task-free: a task supplies the batch loss, and validation loss decides
when to stop (after `patience` epochs without improvement) and which epoch's weights
are kept. Seeded: the same data, settings and seed give the same weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

LossFn = Callable[[nn.Module, Sequence[int]], torch.Tensor]  # (module, example indices) -> loss


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 100
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.01
    patience: int = 5
    seed: int = 0


@dataclass
class FitResult:
    module: nn.Module
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    module: nn.Module,
    train: Sequence[int],
    val: Sequence[int],
    loss: LossFn,
    settings: FitSettings,
    *,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `module` on examples `train`; keep the weights of the best validation loss."""
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    best: tuple[float, int, dict[str, Any]] = (math.inf, 0, copy.deepcopy(module.state_dict()))
    history: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        module.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = [train[i] for i in order[start : start + settings.batch_size]]
            optimizer.zero_grad()
            value = loss(module, batch)
            value.backward()
            optimizer.step()
            total += value.item() * len(batch)
        val_loss = evaluate(module, val, loss, settings.batch_size)
        history.append({"epoch": epoch, "train_loss": total / len(train), "val_loss": val_loss})
        if progress is not None:
            progress(epoch, history[-1])
        if val_loss < best[0] - 1e-6:
            best = (val_loss, epoch, copy.deepcopy(module.state_dict()))
        elif epoch - best[1] >= settings.patience:
            break
    module.load_state_dict(best[2])
    module.eval()
    return FitResult(module, best[1], epoch, history)


@torch.no_grad()
def evaluate(module: nn.Module, examples: Sequence[int], loss: LossFn, batch_size: int) -> float:
    module.eval()
    total = 0.0
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start : start + batch_size])
        total += float(loss(module, batch)) * len(batch)
    return total / max(len(examples), 1)
