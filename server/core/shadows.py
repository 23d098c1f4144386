"""Shadow heads: a candidate head that runs beside a live head of the same task, on the same
calls and the same backbone rows, whose results are compared and never returned.

A shadow is loaded with HeadAdmin.LoadHead(shadow_of=LIVE, shadow_fraction=F): a fraction F of
the calls the live head answers (Encode, Classify, AnswerQuestion, Rerank) are run by the
shadow too. Its rows are submitted with the live call's, in the same instant, so the
scheduler puts them in the same batch and the backbone computes each row once for both
(unless the batch is full: then the shadow's rows wait for the next one). Its prepare,
finish and the comparison run in a task of their own: the live reply waits for none of them,
and nothing the shadow does (a refusal, a failure, a full queue) reaches the live call.

What is measured, per item both answered (`ShadowStats`):
- classify: top-1 agreement (the same best label) and the mean absolute difference of the
  probabilities of the labels both returned;
- encode: the mean cosine of the two vectors;
- qa: exact-match agreement of the best answers' texts.

GetModelInfo shows them on the shadow's HeadInfo; Prometheus has them as
`headserve_shadow_items_total`, `headserve_shadow_agreement` (by measure) and
`headserve_shadow_failures_total`. Promoting a shadow (HeadAdmin.PromoteHead) puts its head in
place of the live one, under the live head's name, in one change.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headserve.plugins.tasks import Classification, Embedding, QuestionAnswer

from .heads import ServedHead

MEASURES = {
    "classify": ("top1_agreement", "mean_abs_probability_difference"),
    "encode": ("mean_cosine",),
    "qa": ("exact_match",),
}


@dataclass(frozen=True)
class Recorded:
    """What one call added to a shadow's stats (for the metrics)."""

    items: int
    failures: int
    sums: dict[str, float]


@dataclass
class ShadowStats:
    """Running sums of a shadow's agreement with its live head (thread-safe)."""

    calls: int = 0  # live calls it ran beside
    items: int = 0  # items both answered, compared
    failures: int = 0  # items the shadow failed (refused, raised)
    skipped: int = 0  # calls it was to run beside but could not (a full queue)
    sums: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def mean(self, measure: str) -> float:
        with self._lock:
            return self.sums.get(measure, 0.0) / self.items if self.items else math.nan

    def record(self, task: str, live: list[Any], shadow: list[Any]) -> Recorded:
        """One call's results, item by item (an exception in `shadow`: a failure); what
        they added."""
        compared: list[dict[str, float]] = []
        failed = 0
        for ours, theirs in zip(live, shadow, strict=True):
            if isinstance(ours, BaseException):
                continue  # the live head did not answer this item: nothing to compare
            if isinstance(theirs, BaseException):
                failed += 1
                continue
            measured = agreement(task, ours, theirs)
            if measured is not None:
                compared.append(measured)
        added: dict[str, float] = {}
        for measured in compared:
            for name, value in measured.items():
                added[name] = added.get(name, 0.0) + value
        with self._lock:
            self.calls += 1
            self.failures += failed
            self.items += len(compared)
            for name, value in added.items():
                self.sums[name] = self.sums.get(name, 0.0) + value
        return Recorded(len(compared), failed, added)

    def failed(self, items: int) -> None:
        with self._lock:
            self.calls += 1
            self.failures += items

    def skip(self) -> None:
        with self._lock:
            self.skipped += 1


@dataclass(frozen=True)
class Shadow:
    served: ServedHead  # the candidate
    live: str  # the name of the head it shadows
    fraction: float  # of the live head's calls it runs beside
    stats: ShadowStats = field(default_factory=ShadowStats)

    @property
    def name(self) -> str:
        return self.served.spec.name

    def sampled(self) -> bool:
        return self.fraction >= 1.0 or random.random() < self.fraction  # noqa: S311


def agreement(task: str, live: Any, shadow: Any) -> dict[str, float] | None:
    """The measures of `task` for one item's two results (None: not comparable)."""
    if task == "classify" and isinstance(live, Classification):
        return _classify(live, shadow)
    if task == "encode" and isinstance(live, Embedding):
        if live.vector is None or shadow.vector is None:
            return None
        a, b = np.asarray(live.vector, np.float64), np.asarray(shadow.vector, np.float64)
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        return {"mean_cosine": float(a @ b) / norms if norms else 0.0}
    if task == "qa" and isinstance(live, QuestionAnswer):
        return {"exact_match": float(_best(live) == _best(shadow))}
    return None


def _classify(live: Classification, shadow: Classification) -> dict[str, float]:
    ours, theirs = dict(live.labels), dict(shadow.labels)
    both = [label for label in ours if label in theirs]
    difference = sum(abs(ours[k] - theirs[k]) for k in both) / len(both) if both else 1.0
    best = live.labels[0][0] if live.labels else None
    return {
        "top1_agreement": float(bool(shadow.labels) and shadow.labels[0][0] == best),
        "mean_abs_probability_difference": difference,
    }


def _best(result: QuestionAnswer) -> str | None:
    return result.answers[0].text if result.answers else None
