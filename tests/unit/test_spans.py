"""QA span decoding against a brute-force search over every span."""

from __future__ import annotations

import numpy as np
import pytest

from headserve.plugins.spans import Window, best_spans


def _window(rng: np.random.Generator, n: int, context_from: int, offsets_base: int) -> Window:
    mask = np.zeros(n, dtype=bool)
    mask[context_from : n - 1] = True
    offsets = [(0, 0)] * n
    for i in range(context_from, n - 1):
        start = offsets_base + (i - context_from) * 3
        offsets[i] = (start, start + 2)
    return Window(rng.normal(size=n), rng.normal(size=n), mask, offsets)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _brute(context: str, windows: list[Window], max_len: int) -> dict[tuple[int, int], float]:
    best: dict[tuple[int, int], float] = {}
    for w in windows:
        allowed = w.context_mask.copy()
        allowed[0] = True
        ps = _softmax(w.start_logits[allowed])
        pe = _softmax(w.end_logits[allowed])
        index = np.flatnonzero(allowed)
        for a, s in enumerate(index):
            for b, e in enumerate(index):
                if s == 0 or e == 0 or e < s or e - s + 1 > max_len:
                    continue
                span = (w.offsets[s][0], w.offsets[e][1])
                best[span] = max(best.get(span, 0.0), float(ps[a] * pe[b]))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_best_spans_equal_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    context = "x" * 200
    windows = [_window(rng, 20, 5, 0), _window(rng, 20, 5, 21)]  # overlapping windows
    answers = best_spans(context, windows, top_k=5, max_answer_length=4, allow_no_answer=False)
    brute = sorted(_brute(context, windows, 4).items(), key=lambda kv: -kv[1])[:5]
    assert [(a.start, a.end) for a in answers] == [span for span, _ in brute]
    np.testing.assert_allclose([a.score for a in answers], [s for _, s in brute], rtol=1e-9)
    assert all(a.text == context[a.start : a.end] for a in answers)


def test_no_answer_wins_only_when_allowed_and_best() -> None:
    n = 10
    mask = np.zeros(n, dtype=bool)
    mask[3:9] = True
    start = np.full(n, -5.0)
    end = np.full(n, -5.0)
    start[0] = end[0] = 10.0  # CLS dominates: the head says "no answer"
    offsets = [(0, 0)] * 3 + [(i, i + 1) for i in range(6)] + [(0, 0)]
    window = Window(start, end, mask, offsets)
    with_null = best_spans("abcdef", [window], top_k=2, max_answer_length=5, allow_no_answer=True)
    assert with_null[0].no_answer and with_null[0].text == "" and with_null[0].score > 0.99
    without = best_spans("abcdef", [window], top_k=1, max_answer_length=5, allow_no_answer=False)
    assert not without[0].no_answer and without[0].text


def test_max_answer_length_bounds_spans() -> None:
    rng = np.random.default_rng(0)
    window = _window(rng, 30, 3, 0)
    answers = best_spans("y" * 100, [window], top_k=50, max_answer_length=2, allow_no_answer=False)
    # spans of at most 2 tokens: each token covers 2 chars with a 1-char gap
    assert answers and all(a.end - a.start <= 5 for a in answers)
