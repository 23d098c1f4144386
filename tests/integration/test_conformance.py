"""Every built-in head equals the transformers class on the same checkpoint (1e-5 torch, 1e-4
ONNX Runtime, float32), through the shared backbone, for every text family of the verified
table (server/backbones/families.py) on each runtime it lists, with the heads it lists."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from checkpoints import LABELS, has_task_class, reference_inputs
from serving import on_core
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from headserve.plugins.contract import HeadSpec
from headserve.plugins.spans import Window, best_spans
from headserve.plugins.tasks import (
    ClassifyOptions,
    EncodeOptions,
    PredictOptions,
    QAItem,
    QAOptions,
    TextItem,
)
from headserve.server.backbones import families
from headserve.server.core.heads import HeadsFailed
from headserve.server.core.runner import Work
from headserve.server.loading import Settings, build_core


def tol(core) -> float:  # type: ignore[no-untyped-def]
    """1e-5 on torch; ONNX Runtime's kernels round differently: 1e-4 there (the issue's bound)."""
    return 1e-4 if core.backbone.runtime.startswith("onnxruntime") else 1e-5


TEXTS = [
    TextItem("Alice works in Paris at the bank."),
    TextItem("The quick brown fox", "jumps over the lazy dog."),
    TextItem("I loved this film."),
]
QUESTION = "Where does Bob work?"
LONG_CONTEXT = " ".join(
    ["The fox jumps over the dog."] * 12
    + ["Bob works in Berlin at the zoo."]
    + ["Alice works in Paris."] * 6
)


CASES = [
    (f.model_types[0], runtime) for f in families.by_modality("text") for runtime in f.runtimes
]


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{r}" for a, r in CASES])
def setup(request, matrix_families, tmp_path_factory):  # type: ignore[no-untyped-def]
    arch, runtime = request.param
    family = matrix_families[arch]
    claims = families.family_of(arch)
    heads = (
        HeadSpec("encode", "encode", family.backbone, {"pooling": "cls"}),
        HeadSpec("classify", "classify", family.classify),
        HeadSpec("tags", "classify", family.multilabel),
    )
    if "mlm" in claims.heads:  # a decoder has none
        heads += (HeadSpec("mlm", "mlm", family.mlm),)
    if "qa" in claims.heads:
        heads += (HeadSpec("qa", "qa", family.qa),)
    with pytest.MonkeyPatch.context() as patch:  # the ONNX export goes to a fresh cache
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        core = build_core(
            Settings(model_dir=family.backbone, heads=heads, device="cpu", runtime=runtime)
        )
    assert core.backbone.runtime.startswith("onnxruntime" if runtime == "onnx" else "torch")
    tokenizer = AutoTokenizer.from_pretrained(str(family.backbone))
    return family, core, tokenizer


def _inputs(model, tokenizer, item: TextItem):  # type: ignore[no-untyped-def]
    return reference_inputs(model, tokenizer(item.text, item.text_pair, return_tensors="pt"))


def _run(core, task, heads, items, options):  # type: ignore[no-untyped-def]
    return on_core(core, lambda: core.run(task, heads, items, options)).results


@torch.inference_mode()
def test_encode_matches_automodel(setup) -> None:  # type: ignore[no-untyped-def]
    family, core, tokenizer = setup
    reference = AutoModel.from_pretrained(str(family.backbone)).eval()
    for pooling in families.family_of(family.arch).poolings:
        results = _run(
            core, "encode", [None], TEXTS, EncodeOptions(pooling=pooling, normalize=False)
        )
        for item, (embedding,) in zip(TEXTS, results):
            states = reference(**_inputs(reference, tokenizer, item)).last_hidden_state[0].numpy()
            if pooling == "none":
                np.testing.assert_allclose(embedding.token_states, states, atol=tol(core))
                assert len(embedding.tokens) == states.shape[0]
            elif pooling == "cls":
                np.testing.assert_allclose(embedding.vector, states[0], atol=tol(core))
            elif pooling == "lasttoken":
                np.testing.assert_allclose(embedding.vector, states[-1], atol=tol(core))
            else:
                np.testing.assert_allclose(embedding.vector, states.mean(0), atol=tol(core))
    ((normalized,),) = _run(
        core, "encode", [None], TEXTS[:1], EncodeOptions(pooling="mean", normalize=True)
    )
    assert np.linalg.norm(normalized.vector) == pytest.approx(1.0, abs=1e-5)


@torch.inference_mode()
def test_mlm_matches_automodel_for_masked_lm(setup) -> None:  # type: ignore[no-untyped-def]
    family, core, tokenizer = setup
    if "mlm" not in families.family_of(family.arch).heads:
        _no_mlm_head_by_default_and_a_configured_one_refused(family.arch, family.backbone)
        return
    reference = AutoModelForMaskedLM.from_pretrained(str(family.mlm)).eval()
    mask = tokenizer.mask_token
    items = [
        TextItem(f"Alice works in {mask} at the bank."),
        TextItem(f"The {mask} brown fox {mask} over."),
    ]
    full = _run(core, "mlm", [None], items, PredictOptions(top_k=3, return_logits=True))
    picked = _run(core, "mlm", [None], items, PredictOptions(top_k=3))
    for item, (with_logits,), (prediction,) in zip(items, full, picked):
        enc = _inputs(reference, tokenizer, item)
        logits = reference(**enc).logits[0]
        np.testing.assert_allclose(with_logits.logits, logits.numpy(), atol=tol(core))
        positions = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        assert [m.position for m in prediction.masks] == positions
        for m in prediction.masks:
            probs = logits[m.position].softmax(-1)
            top = probs.topk(3)
            assert [c.token_id for c in m.candidates] == top.indices.tolist()
            np.testing.assert_allclose(
                [c.probability for c in m.candidates], top.values.numpy(), atol=tol(core)
            )
            assert item.text[m.span[0] : m.span[1]] == mask


@torch.inference_mode()
def test_classify_matches_automodel_for_sequence_classification(setup) -> None:  # type: ignore[no-untyped-def]
    family, core, tokenizer = setup
    single = AutoModelForSequenceClassification.from_pretrained(str(family.classify)).eval()
    multi = AutoModelForSequenceClassification.from_pretrained(str(family.multilabel)).eval()
    results = _run(core, "classify", ["classify", "tags"], TEXTS, ClassifyOptions())
    for item, (one, tags) in zip(TEXTS, results):
        enc = _inputs(single, tokenizer, item)
        expected_single = single(**enc).logits[0].softmax(-1).numpy()
        expected_multi = multi(**enc).logits[0].sigmoid().numpy()
        assert (one.head, one.multi_label, tags.head, tags.multi_label) == (
            "classify",
            False,
            "tags",
            True,
        )
        got_single = dict(one.labels)
        got_multi = dict(tags.labels)
        np.testing.assert_allclose([got_single[l] for l in LABELS], expected_single, atol=tol(core))
        np.testing.assert_allclose([got_multi[l] for l in LABELS], expected_multi, atol=tol(core))
        assert [p for _, p in one.labels] == sorted(got_single.values(), reverse=True)


@torch.inference_mode()
def test_qa_matches_automodel_for_question_answering_over_windows(setup) -> None:  # type: ignore[no-untyped-def]
    family, core, tokenizer = setup
    if "qa" not in families.family_of(family.arch).heads:
        _no_qa_class_and_no_default_qa_head(family.arch, family.backbone)
        return
    reference = AutoModelForQuestionAnswering.from_pretrained(str(family.qa)).eval()
    head = core.registry.resolve("qa", None)
    options = QAOptions(top_k=3, doc_stride=16)
    item = QAItem(QUESTION, LONG_CONTEXT)
    prepared = head.prepare(item, options)
    assert len(prepared.rows) > 2  # the context does not fit one window
    outputs = core.runner.compute([Work(head, row) for row in prepared.rows])
    windows = []
    for row, (start, end), (mask, offsets) in zip(prepared.rows, outputs, prepared.state[1]):
        encoding = {"input_ids": torch.tensor([row.input_ids])}
        if row.token_type_ids is not None:
            encoding["token_type_ids"] = torch.tensor([row.token_type_ids])
        ref = reference(**reference_inputs(reference, encoding))
        np.testing.assert_allclose(start, ref.start_logits[0].numpy(), atol=tol(core))
        np.testing.assert_allclose(end, ref.end_logits[0].numpy(), atol=tol(core))
        windows.append(
            Window(ref.start_logits[0].numpy(), ref.end_logits[0].numpy(), mask, offsets)
        )
    ((answer,),) = _run(core, "qa", [None], [item], options)
    expected = best_spans(
        LONG_CONTEXT, windows, top_k=3, max_answer_length=30, allow_no_answer=False
    )
    assert answer.windows == len(prepared.rows)
    assert [(a.start, a.end, a.text) for a in answer.answers] == [
        (a.start, a.end, a.text) for a in expected
    ]
    np.testing.assert_allclose(
        [a.score for a in answer.answers], [a.score for a in expected], atol=tol(core)
    )
    for a in answer.answers:
        assert LONG_CONTEXT[a.start : a.end] == a.text


def _no_mlm_head_by_default_and_a_configured_one_refused(arch: str, folder) -> None:  # type: ignore[no-untyped-def]
    """A family without a masked-LM class (a decoder): started with its default heads it
    leaves mlm out (not a failed plugin); an mlm head configured stops the start."""
    assert not has_task_class(arch, "mlm")
    core = build_core(Settings(model_dir=folder, device="cpu", runtime="torch"))
    assert "mlm" not in core.registry.heads and not core.registry.failures
    with pytest.raises(HeadsFailed, match="head 'm'"):
        build_core(
            Settings(model_dir=folder, heads=(HeadSpec("m", "mlm"),), device="cpu", runtime="torch")
        )


def _no_qa_class_and_no_default_qa_head(arch: str, folder) -> None:  # type: ignore[no-untyped-def]
    """A family the table lists without qa has no transformers class for it: a server
    started with its default heads leaves the qa head out (not a failed plugin), and a qa
    head configured stops the start."""
    assert not has_task_class(arch, "qa")
    core = build_core(Settings(model_dir=folder, device="cpu", runtime="torch"))
    masked_lm = "mlm" in families.family_of(arch).heads
    assert set(core.registry.heads) == {"encode", "classify"} | ({"mlm"} if masked_lm else set())
    assert not core.registry.failures
    with pytest.raises(HeadsFailed, match="head 'q'"):
        build_core(
            Settings(model_dir=folder, heads=(HeadSpec("q", "qa"),), device="cpu", runtime="torch")
        )


def test_mixed_batch_equals_items_run_alone(setup) -> None:  # type: ignore[no-untyped-def]
    """Rows of every head, shuffled into one batch, give what each gives alone (no mis-routing)."""
    family, core, tokenizer = setup
    mask = tokenizer.mask_token
    jobs = []
    for name, options, items in (
        ("encode", EncodeOptions(pooling="mean"), TEXTS),
        (
            "mlm",
            PredictOptions(),
            [TextItem(f"Alice works in {mask}."), TextItem(f"A {mask} movie")],
        ),
        ("classify", ClassifyOptions(), TEXTS),
        ("tags", ClassifyOptions(), TEXTS[::-1]),
        (
            "qa",
            QAOptions(doc_stride=16),
            [QAItem(QUESTION, LONG_CONTEXT), QAItem("Who?", "Alice works.")],
        ),
    ):
        if name not in core.registry.heads:  # a family without qa (the table says which)
            continue
        head = core.registry.heads[name].head
        for item in items:
            for row in head.prepare(item, options).rows:
                jobs.append(Work(head, row))
    random.Random(7).shuffle(jobs)
    before = core.runner.rows_computed
    mixed = core.runner.compute(jobs)
    assert core.runner.rows_computed - before < len(jobs)  # identical rows ran once
    for job, together in zip(jobs, mixed):
        (alone,) = core.runner.compute([job])
        for a, b in zip(np.atleast_1d(_flat(alone)), np.atleast_1d(_flat(together))):
            np.testing.assert_allclose(a, b, atol=tol(core))


def _flat(output):  # type: ignore[no-untyped-def]
    if isinstance(output, tuple):
        return np.concatenate([np.asarray(o).ravel() for o in output])
    return np.asarray(output).ravel()
