"""The third-party token-classification plugin (plugins/token-classification, its own
distribution, installed by `make install`), reached only through its entry point: exact
against transformers, served by Heads.Run through the typed client, and batched with the
built-in heads in one backbone pass."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from checkpoints import ARCHS, NER_LABELS
from faults import held
from serving import ServerThread, on_core
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

from headserve.client import (
    Client,
    InvalidArgumentError,
    NotFoundError,
)
from headserve.plugins.contract import HeadSpec
from headserve.plugins.tasks import TextItem
from headserve.server.core.scheduler import Limits
from headserve.server.discovery import find_plugins, load_plugins
from headserve.server.loading import Settings, build_core

TOL = 1e-5
TEXTS = [
    "Alice works in Paris at the bank.",
    "Bob works in Berlin at the zoo, and Alice visits him.",
    "The quick brown fox jumps over the lazy dog.",
    "Where does Bob work? Who works in Paris?",
]


def test_the_plugin_is_found_through_its_entry_point() -> None:
    refs = [r for r in find_plugins() if r.name == "token_classification"]
    assert [(r.distribution, r.value) for r in refs] == [
        (
            "headserve-token-classification",
            "headserve_token_classification:TokenClassificationPlugin",
        )
    ]
    (loaded,), failed = load_plugins(refs)
    assert not failed
    assert loaded.plugin.task == "token_classification"
    assert type(loaded.plugin).__module__.startswith("headserve_token_classification")


@pytest.fixture(scope="module", params=ARCHS)
def ner(request, families):  # type: ignore[no-untyped-def]
    family = families[request.param]
    core = build_core(
        Settings(
            model_dir=family.backbone,
            heads=(HeadSpec("ner", "token_classification", family.ner),),
            device="cpu",
        )
    )
    reference = AutoModelForTokenClassification.from_pretrained(str(family.ner)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(family.ner))
    return family, core, reference, tokenizer


def _run(core, params, server: ServerThread | None = None):  # type: ignore[no-untyped-def]
    """The head's outputs in process: on `server`'s event loop when it serves `core`."""
    items = [TextItem(t) for t in TEXTS]

    def call():  # type: ignore[no-untyped-def]
        return core.run_head("ner", items, params, truncate=False)

    head, outcome = server.call(call()) if server is not None else on_core(core, call)
    return [per_item[0] for per_item in outcome.results]


@torch.inference_mode()
def test_logits_match_the_transformers_class(ner) -> None:  # type: ignore[no-untyped-def]
    family, core, reference, tokenizer = ner
    outputs = _run(core, {"return_logits": True})
    for text, output in zip(TEXTS, outputs):
        enc = tokenizer(text, return_tensors="pt")
        if "token_type_ids" not in tokenizer.model_input_names:
            enc.pop("token_type_ids", None)
        expected = reference(**enc).logits[0].numpy()
        assert output.tensors["logits"].shape == (len(enc["input_ids"][0]), len(NER_LABELS))
        np.testing.assert_allclose(output.tensors["logits"], expected, atol=TOL, rtol=0)
        assert output.fields["tokens"] == len(enc["input_ids"][0])


@pytest.mark.parametrize("aggregation", ["simple", "none"])
def test_entities_match_the_transformers_pipeline(ner, aggregation: str) -> None:  # type: ignore[no-untyped-def]
    family, core, reference, tokenizer = ner
    pipe = pipeline(
        "token-classification",
        model=reference,
        tokenizer=tokenizer,
        aggregation_strategy=aggregation,
        device="cpu",
    )
    outputs = _run(core, {"aggregation": aggregation})
    label_key = "entity_group" if aggregation == "simple" else "entity"
    total = grouped = 0
    for text, output in zip(TEXTS, outputs):
        expected = pipe(text)
        got = output.fields["entities"]
        assert [(e[label_key], e["start"], e["end"]) for e in expected] == [
            (e["label"], e["start"], e["end"]) for e in got
        ]
        np.testing.assert_allclose(
            [e["score"] for e in got], [float(e["score"]) for e in expected], atol=TOL
        )
        assert all(e["text"] == text[e["start"] : e["end"]] for e in got)
        total += len(got)
        grouped += sum(" " in e["text"].strip() for e in got)  # several words
    assert total > 3  # the checkpoint finds entities, so the comparison is not vacuous
    if aggregation == "simple":
        assert grouped > 0  # and merges tokens into entities


@torch.inference_mode()
def test_a_text_longer_than_the_window_is_read_in_windows_and_stitched(ner) -> None:  # type: ignore[no-untyped-def]
    """Ten windows of a 64-token model: each token's logits are those of the window where it
    sits nearest the middle (transformers' model on each window row), entities carry offsets
    into the whole text, and none is found twice where windows overlap."""
    from headserve_token_classification import entities

    family, core, reference, tokenizer = ner
    text = " ".join(TEXTS * 8)
    items = [TextItem(text)]
    _, outcome = on_core(
        core, lambda: core.run_head("ner", items, {"return_logits": True}, truncate=False)
    )
    (output,) = outcome.results[0]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    room = 64 - 2
    starts = [*range(0, len(ids) - room, room // 2), len(ids) - room]
    states = []
    for start in starts:
        row = [tokenizer.cls_token_id, *ids[start : start + room], tokenizer.sep_token_id]
        states.append(reference(input_ids=torch.tensor([row])).logits[0].numpy())
    want = np.stack(
        [
            states[w][1 + t - starts[w]]
            for t in range(len(ids))
            for w in [
                max(
                    (w for w, s in enumerate(starts) if s <= t < s + room),
                    key=lambda w, t=t: (min(t - starts[w], starts[w] + room - 1 - t), -w),
                )
            ]
        ]
    )
    assert len(starts) >= 9 and output.fields["tokens"] == len(ids)
    np.testing.assert_allclose(output.tensors["logits"], want, atol=TOL, rtol=0)
    probs = torch.tensor(want).softmax(-1).numpy()
    found = entities.tokens(probs, NER_LABELS, [tuple(o) for o in offsets], [True] * len(ids))
    expected = entities.entities(found, aggregation="simple", ignore=["O"], text=text)
    _same(output.fields["entities"], expected)
    spans = [(e["start"], e["end"]) for e in output.fields["entities"]]
    assert len(spans) > 8 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # none twice
    assert all(e["text"] == text[e["start"] : e["end"]] for e in output.fields["entities"])


# --- served, through the typed client ---------------------------------------------------------


def _same(got, want) -> None:  # type: ignore[no-untyped-def]
    """Entities equal; scores to float32 precision (JSON numbers travel as doubles)."""
    assert [{k: v for k, v in e.items() if k != "score"} for e in got] == [
        {k: v for k, v in e.items() if k != "score"} for e in want
    ]
    np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=TOL)


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("classify", "classify", bert.classify),
        HeadSpec("mlm", "mlm", bert.mlm),
        HeadSpec("qa", "qa", bert.qa),
        HeadSpec("ner", "token_classification", bert.ner),
    )
    # one model worker, so that a held batch holds the whole model (the shared-pass test)
    thread = ServerThread(
        Settings(model_dir=bert.backbone, heads=heads, device="cpu", limits=Limits(workers=1))
    )
    yield thread
    thread.stop()


def test_run_through_the_client_equals_the_head_in_process(server: ServerThread) -> None:
    with Client(server.target) as client:
        result = client.run("ner", TEXTS, options={"return_logits": True})
        info = client.model_info().head("ner")
    assert result.head == "ner" and result.task == "token_classification"
    expected = _run(server.core, {"return_logits": True}, server)
    assert len(result) == len(TEXTS)
    for got, want in zip(result, expected):
        _same(got.fields["entities"], want.fields["entities"])
        np.testing.assert_array_equal(got.tensors["logits"], want.tensors["logits"])
    assert result.usage.input_tokens == sum(e.fields["tokens"] for e in expected)
    assert info.task == "token_classification"
    assert info.distribution == "headserve-token-classification"
    assert info.labels == NER_LABELS
    assert [f.name for f in info.outputs] == ["entities", "tokens", "logits"]
    assert {p.name: p.default for p in info.parameters} == {
        "aggregation": "simple",
        "ignore_labels": "O",
        "return_logits": False,
    }


def test_run_errors_name_the_field_and_leave_the_server_serving(server: ServerThread) -> None:
    with Client(server.target, max_retries=0) as client:
        with pytest.raises(InvalidArgumentError, match=r"options\.aggregation"):
            client.run("ner", TEXTS, options={"aggregation": "max"})
        with pytest.raises(InvalidArgumentError, match=r"options\.colour"):
            client.run("ner", TEXTS, options={"colour": "red"})
        with pytest.raises(InvalidArgumentError, match=r"items\[1\]\.text_pair"):
            client.run("ner", ["fine", ("a", "pair")])
        with pytest.raises(InvalidArgumentError, match=r"items\[0\]\.text"):
            client.run("ner", [""])
        with pytest.raises(NotFoundError, match="nope"):
            client.run("nope", TEXTS)
        with pytest.raises(InvalidArgumentError, match="built-in"):
            client.run("classify", TEXTS)
        assert len(client.run("ner", TEXTS[:1])) == 1


def test_run_stream_answers_each_request_alone(server: ServerThread) -> None:
    from headserve.client import Batch

    batches = [
        Batch(TEXTS[:2], id="a"),
        Batch([""], id="bad"),
        Batch(TEXTS[2:], id="b"),
    ]
    with Client(server.target) as client:
        replies = list(client.run_stream(batches, head="ner"))
    assert [r.id for r in replies] == ["a", "bad", "b"]
    assert replies[0].ok and replies[2].ok and not replies[1].ok
    expected = _run(server.core, {}, server)
    got = [*replies[0].unwrap(), *replies[2].unwrap()]
    for g, e in zip(got, expected, strict=True):
        _same(g.fields["entities"], e.fields["entities"])


def test_plugin_rows_share_one_backbone_pass_with_the_built_in_heads(
    server: ServerThread,
) -> None:
    core = server.core
    assert core is not None
    runner, scheduler = core.runner, core.scheduler
    question = "Where does Bob work?"
    with Client(server.target) as client:
        alone = (
            client.run("ner", TEXTS),
            client.encode(TEXTS),
            client.classify(TEXTS),
            client.predict_tokens([t.replace("works", "[MASK]") for t in TEXTS[:2]]),
            client.answer_question([(question, t) for t in TEXTS]),
        )
        with held(runner) as gate, ThreadPoolExecutor(6) as pool:
            blocker = pool.submit(client.encode, ["hold the model"])
            deadline = time.monotonic() + 30
            while not scheduler.busy:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            before = runner.batches
            calls = [
                pool.submit(client.run, "ner", TEXTS),
                pool.submit(client.encode, TEXTS),
                pool.submit(client.classify, TEXTS),
                pool.submit(
                    client.predict_tokens, [t.replace("works", "[MASK]") for t in TEXTS[:2]]
                ),
                pool.submit(client.answer_question, [(question, t) for t in TEXTS]),
            ]
            while scheduler.queued < 4 * len(TEXTS) + 2:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            gate.set()
            together = tuple(c.result(timeout=60) for c in calls)
            blocker.result(timeout=60)
    assert runner.batches == before + 2  # the blocker's batch, then ONE for all five calls
    ner_alone, ner_together = alone[0], together[0]
    for a, b in zip(ner_alone, ner_together, strict=True):
        _same(b.fields["entities"], a.fields["entities"])
    np.testing.assert_allclose(together[1].vectors, alone[1].vectors, atol=TOL)
    for a, b in zip(alone[2], together[2]):
        assert a.heads[0].labels[0].probability == pytest.approx(
            b.heads[0].labels[0].probability, abs=TOL
        )
    for a, b in zip(alone[3], together[3], strict=True):  # the MLM head's candidates
        assert len(a.masks) == len(b.masks) == 1
        for mask_alone, mask_together in zip(a.masks, b.masks, strict=True):
            assert mask_alone.position == mask_together.position
            assert [c.token for c in mask_alone.candidates] == [
                c.token for c in mask_together.candidates
            ]
            np.testing.assert_allclose(
                [c.probability for c in mask_together.candidates],
                [c.probability for c in mask_alone.candidates],
                atol=TOL,
            )
    for a, b in zip(alone[4], together[4]):
        assert (a.best is None) == (b.best is None)
        if a.best is not None and b.best is not None:
            assert (a.best.start, a.best.end) == (b.best.start, b.best.end)
