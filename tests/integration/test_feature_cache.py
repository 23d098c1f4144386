"""The feature cache (--feature-cache-mb): rows seen before skip the backbone, and every head
reads the kept states as it reads a fresh pass's. Each case runs the same calls on a server
with the cache and on one without, on torch and on ONNX Runtime (the conformance matrix's BERT,
weights drawn wide so that a wrong state shows): results equal within 1e-6 where the batches
were the same, and the backbone computes only the rows it never saw."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from serving import on_core

from headserve.plugins.contract import HeadSpec
from headserve.plugins.tasks import (
    ClassifyOptions,
    EncodeOptions,
    PredictOptions,
    QAItem,
    QAOptions,
    TextItem,
)
from headserve.server.core.engine import Core
from headserve.server.loading import Settings, build_core

TEXTS = [
    TextItem("Alice works in Paris."),
    TextItem("The quick brown fox jumps over the lazy dog, again and again, all day long."),
    TextItem("Where does Bob work?", "Bob works in Berlin at the zoo."),
    TextItem("short"),
]
NEW = [TextItem("A sentence this server has never seen."), TextItem("Nor this one, at all.")]
MASKED = [TextItem("Alice works in [MASK]."), TextItem("The [MASK] brown fox jumps.")]
QUESTIONS = [QAItem("Where does Bob work?", "Bob works in Berlin at the zoo, most days.")]
OPTIONS = {
    "encode": EncodeOptions(pooling="mean", normalize=False),
    "classify": ClassifyOptions(),
    "mlm": PredictOptions(top_k=3),
    "qa": QAOptions(),
}


def _settings(family: Any, runtime: str, cache_mb: int, cache_for: str = "all") -> Settings:
    heads = (
        HeadSpec("encode", "encode", family.backbone, {"pooling": "mean"}),
        HeadSpec("classify", "classify", family.classify),
        HeadSpec("mlm", "mlm", family.mlm),
        HeadSpec("qa", "qa", family.qa),
    )
    return Settings(
        model_dir=family.backbone,
        heads=heads,
        device="cpu",
        runtime=runtime,
        feature_cache_mb=cache_mb,
        feature_cache_for=cache_for,
    )


@pytest.fixture(scope="module", params=["torch", "onnx"])
def cores(request, matrix_families, tmp_path_factory) -> Iterator[tuple[Core, Core]]:  # type: ignore[no-untyped-def]
    """(with the cache, without), on one runtime."""
    family = matrix_families["bert"]
    with pytest.MonkeyPatch.context() as patch:  # the ONNX export goes to a fresh cache
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        cached = build_core(_settings(family, request.param, 64))
        plain = build_core(_settings(family, request.param, 0))
    assert cached.runner.cache is not None and plain.runner.cache is None
    yield cached, plain


def _run(core: Core, task: str, head: str, items: list[Any]) -> list[Any]:
    return on_core(core, lambda: core.run(task, [head], items, OPTIONS[task])).results


def _assert_same(got: Any, want: Any, atol: float, where: str = "") -> None:
    """Equal results: numbers within `atol`, everything else exactly."""
    if dataclasses.is_dataclass(got) and not isinstance(got, type):
        assert type(got) is type(want), where
        for f in dataclasses.fields(got):
            _assert_same(getattr(got, f.name), getattr(want, f.name), atol, f"{where}.{f.name}")
    elif isinstance(got, np.ndarray) or isinstance(got, float):
        np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=where)
    elif isinstance(got, list | tuple):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, atol, f"{where}[{i}]")
    elif isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for key in got:
            _assert_same(got[key], want[key], atol, f"{where}[{key!r}]")
    else:
        assert got == want, where


def test_rows_seen_before_skip_the_backbone_and_every_head_reads_them_as_computed(
    cores: tuple[Core, Core],
) -> None:
    cached, plain = cores
    runner = cached.runner
    first = _run(cached, "encode", "encode", TEXTS)
    _assert_same(first, _run(plain, "encode", "encode", TEXTS), 1e-6)
    computed = runner.rows_computed
    assert computed == len(TEXTS)
    # a head these rows have never been through: no backbone row, the same answers
    _assert_same(
        _run(cached, "classify", "classify", TEXTS),
        _run(plain, "classify", "classify", TEXTS),
        1e-6,
    )
    assert runner.rows_computed == computed
    _assert_same(_run(cached, "encode", "encode", TEXTS), first, 1e-6)
    assert runner.rows_computed == computed
    # kept rows and new ones in one call: only the new ones computed; the kept ones were
    # computed in another batch than the plain server's, whose packing rounds otherwise
    mixed = [*NEW, *TEXTS]
    tol = 1e-4 if cached.backbone.runtime.startswith("onnxruntime") else 1e-5
    _assert_same(
        _run(cached, "classify", "classify", mixed), _run(plain, "classify", "classify", mixed), tol
    )
    assert runner.rows_computed == computed + len(NEW)
    # token-level heads, run twice: the second time from the cache, the same answers
    for task, head, items in (("mlm", "mlm", MASKED), ("qa", "qa", QUESTIONS)):
        want = _run(plain, task, head, items)
        _assert_same(_run(cached, task, head, items), want, 1e-6, task)
        before = runner.rows_computed
        _assert_same(_run(cached, task, head, items), want, 1e-6, task)
        assert runner.rows_computed == before, task
    cache = runner.cache
    assert cache is not None and cache.hits > 0 and cache.misses == runner.rows_computed
    registry = cached.scheduler.metrics.registry
    assert registry.get_sample_value("headserve_feature_cache_hits_total") == cache.hits
    assert registry.get_sample_value("headserve_feature_cache_misses_total") == cache.misses
    assert registry.get_sample_value("headserve_feature_cache_bytes") == cache.bytes > 0


def test_the_cache_holds_at_most_its_bytes_and_lets_the_least_recent_go(matrix_families) -> None:  # type: ignore[no-untyped-def]
    core = build_core(_settings(matrix_families["bert"], "torch", 1))  # 1 MiB
    cache = core.runner.cache
    assert cache is not None and cache.max_bytes == 2**20
    texts = [
        TextItem(f"Sentence number {i} of a corpus larger than the cache holds.")
        for i in range(600)
    ]
    for start in range(0, len(texts), 100):
        _run(core, "encode", "encode", texts[start : start + 100])
    assert 0 < cache.bytes <= cache.max_bytes
    assert cache.evictions > 0 and len(cache) + cache.evictions == len(texts)
    before = core.runner.rows_computed
    _run(core, "encode", "encode", texts[-20:])  # the most recent: still there
    assert core.runner.rows_computed == before
    _run(core, "encode", "encode", texts[:20])  # the first: long gone
    assert core.runner.rows_computed == before + 20
    assert (
        core.scheduler.metrics.registry.get_sample_value("headserve_feature_cache_evictions_total")
        == cache.evictions
    )


def test_a_cache_for_bulk_work_keeps_and_serves_bulk_rows_alone(matrix_families) -> None:  # type: ignore[no-untyped-def]
    """--feature-cache-for bulk: interactive calls always run the backbone and leave nothing;
    a bulk call's rows (a batch job's) are kept and serve the next bulk call."""
    from headserve.server.call_info import PRIORITY

    core = build_core(_settings(matrix_families["bert"], "torch", 64, "bulk"))
    cache, runner = core.runner.cache, core.runner
    assert cache is not None and cache.bulk_only

    def run(task: str, head: str, bulk: bool) -> list[Any]:
        async def call() -> Any:
            PRIORITY.set("bulk" if bulk else "interactive")  # this task's own context
            return await core.run(task, [head], TEXTS, OPTIONS[task])

        return on_core(core, call).results

    live = run("encode", "encode", bulk=False)
    assert runner.rows_computed == len(TEXTS) and len(cache) == 0
    _assert_same(run("encode", "encode", bulk=True), live, 1e-6)  # computed, and kept
    assert runner.rows_computed == 2 * len(TEXTS) and len(cache) == len(TEXTS)
    run("classify", "classify", bulk=True)  # from the cache
    assert runner.rows_computed == 2 * len(TEXTS) and cache.hits == len(TEXTS)
    run("classify", "classify", bulk=False)  # interactive: never looked up
    assert runner.rows_computed == 3 * len(TEXTS) and cache.hits == len(TEXTS)
    assert cache.misses == len(TEXTS)  # the bulk rows computed once; interactive ones not counted
