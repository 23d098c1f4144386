"""What differs between tasks when training: targets, the batch loss, predictions, metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from headserve.plugins.contract import Prepared
from headserve.plugins.qa import decode
from headserve.plugins.tasks import QAOptions

from . import metrics
from .data import Answered
from .features import QAFeatures
from .fit import LossFn

# --- classify -------------------------------------------------------------------------------


def label_names(labels: Sequence[str]) -> tuple[str, ...]:
    """Distinct labels in a stable order: numeric when every label is an integer."""
    distinct = set(labels)
    if all(label.lstrip("-").isdigit() for label in distinct):
        return tuple(sorted(distinct, key=int))
    return tuple(sorted(distinct))


@dataclass(frozen=True)
class ClassifyData:
    features: torch.Tensor  # [examples, hidden]
    targets: torch.Tensor  # [examples] class indices
    labels: tuple[str, ...]

    def loss(self) -> LossFn:
        def batch_loss(module: nn.Module, batch: Sequence[int]) -> torch.Tensor:
            index = torch.tensor(batch)
            return nn.functional.cross_entropy(module(self.features[index]), self.targets[index])

        return batch_loss

    @torch.no_grad()
    def probabilities(self, module: nn.Module, examples: Sequence[int]) -> torch.Tensor:
        module.eval()
        return module(self.features[torch.tensor(list(examples))]).float().softmax(-1)

    def metrics(self, module: nn.Module, examples: Sequence[int]) -> dict[str, float]:
        predicted = self.probabilities(module, examples).argmax(-1).tolist()
        gold = self.targets[torch.tensor(list(examples))].tolist()
        return {
            "accuracy": metrics.accuracy(predicted, gold),
            "macro_f1": metrics.macro_f1(predicted, gold, len(self.labels)),
        }

    def majority_accuracy(self, train: Sequence[int], val: Sequence[int]) -> float:
        counts = np.bincount(self.targets[torch.tensor(list(train))].numpy(), minlength=2)
        majority = int(counts.argmax())
        return metrics.accuracy(
            [majority] * len(val), self.targets[torch.tensor(list(val))].tolist()
        )


# --- qa -------------------------------------------------------------------------------------


def window_target(prepared: Prepared, window: int, start: int, answer: str) -> tuple[int, int]:
    """Token indices of the answer in one window, or (0, 0) when it is not wholly inside."""
    _, spans = prepared.state
    mask, offsets = spans[window]
    context = [i for i, m in enumerate(mask) if m]
    end = start + len(answer)
    if not context or offsets[context[0]][0] > start or offsets[context[-1]][1] < end:
        return 0, 0
    first = max(i for i in context if offsets[i][0] <= start)
    last = min(i for i in context if offsets[i][1] >= end)
    return first, max(first, last)


@dataclass(frozen=True)
class QAData:
    features: QAFeatures
    examples: Sequence[Answered]
    windows: list[tuple[int, int]]  # (example, window) of every window
    targets: torch.Tensor  # [windows, 2]: start and end token

    @classmethod
    def build(cls, features: QAFeatures, examples: Sequence[Answered]) -> QAData:
        windows, targets = [], []
        for e, (prepared, example) in enumerate(zip(features.prepared, examples, strict=True)):
            for w in range(len(prepared.rows)):
                windows.append((e, w))
                targets.append(window_target(prepared, w, example.start, example.answer))
        return cls(features, examples, windows, torch.tensor(targets, dtype=torch.long))

    def windows_of(self, examples: Sequence[int]) -> list[int]:
        chosen = set(examples)
        return [i for i, (e, _) in enumerate(self.windows) if e in chosen]

    def loss(self) -> LossFn:
        def batch_loss(module: nn.Module, batch: Sequence[int]) -> torch.Tensor:
            states, allowed = [], []
            for i in batch:
                e, w = self.windows[i]
                states.append(self.features.states[e][w])
                mask = torch.as_tensor(self.features.prepared[e].state[1][w][0], dtype=torch.bool)
                mask = mask.clone()
                mask[0] = True  # "no answer in this window" points at the first token
                allowed.append(mask)
            padded = nn.utils.rnn.pad_sequence(states, batch_first=True)
            allowed_mask = nn.utils.rnn.pad_sequence(allowed, batch_first=True)
            logits = module(padded).masked_fill(~allowed_mask.unsqueeze(-1), -1e4)
            target = self.targets[torch.tensor(list(batch))]
            return (
                nn.functional.cross_entropy(logits[..., 0], target[:, 0])
                + nn.functional.cross_entropy(logits[..., 1], target[:, 1])
            ) / 2

        return batch_loss

    @torch.no_grad()
    def answers(self, module: nn.Module, examples: Sequence[int]) -> list[str]:
        module.eval()
        options = QAOptions(top_k=1)
        found = []
        for e in examples:
            outputs = []
            for state in self.features.states[e]:
                logits = module(state).numpy()
                outputs.append((logits[:, 0], logits[:, 1]))
            result = decode(self.features.prepared[e], outputs, options)
            found.append(result.answers[0].text if result.answers else "")
        return found

    def metrics(self, module: nn.Module, examples: Sequence[int]) -> dict[str, float]:
        predicted = self.answers(module, examples)
        gold = [self.examples[e].answer for e in examples]
        n = max(len(gold), 1)
        return {
            "exact_match": sum(map(metrics.exact_match, predicted, gold)) / n,
            "f1": sum(map(metrics.f1, predicted, gold)) / n,
        }
