"""Heads.RunHeads: several heads of different tasks (encode, classify, masked-LM, question
answering, the token-classification plugin) on the same items in ONE backbone pass per item.
Each head's results equal what its own service returns (those are held to transformers in
their own tests); one head's refusal of an item or of its options is that head's alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from serving import ServerThread

from headserve.client import (
    AnswerQuestionHead,
    AsyncClient,
    Batch,
    ClassifyHead,
    Client,
    Embedding,
    EncodeHead,
    GenericHead,
    HeadClassification,
    HeadOutput,
    InvalidArgumentError,
    NotFoundError,
    PredictTokensHead,
    QuestionAnswer,
    TokenPrediction,
)
from headserve.plugins.contract import HeadSpec
from headserve.server.core.scheduler import Limits
from headserve.server.loading import Settings

TOL = 1e-5
TEXTS = [
    "Alice [MASK] in Paris at the bank.",
    "Bob works in Berlin at the [MASK], and Alice visits him.",
    "The quick brown fox [MASK] over the lazy dog.",
]
HEADS = [
    EncodeHead("encode", normalize=True),
    ClassifyHead("classify", top_k=2),
    PredictTokensHead("mlm", top_k=3),
    GenericHead("ner", {"aggregation": "simple"}),
]


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode", None, {"pooling": "cls"}),
        HeadSpec("classify", "classify", bert.classify),
        HeadSpec("mlm", "mlm", bert.mlm),
        HeadSpec("qa", "qa", bert.qa),
        HeadSpec("ner", "token_classification", bert.ner),
    )
    # one model worker: a call's rows form one batch (no sharing out to idle workers)
    thread = ServerThread(
        Settings(model_dir=bert.backbone, heads=heads, device="cpu", limits=Limits(workers=1))
    )
    yield thread
    thread.stop()


def _same_entities(got, want) -> None:  # type: ignore[no-untyped-def]
    assert [{k: v for k, v in e.items() if k != "score"} for e in got] == [
        {k: v for k, v in e.items() if k != "score"} for e in want
    ]
    np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=TOL)


def test_each_head_equals_its_own_service_in_one_backbone_pass(server: ServerThread) -> None:
    core = server.core
    assert core is not None
    runner = core.runner
    with Client(server.target) as client:
        rows_before, batches_before = runner.rows_computed, runner.batches
        result = client.run_heads(TEXTS, HEADS)
        rows, batches = runner.rows_computed - rows_before, runner.batches - batches_before
        encoded = client.encode(TEXTS, normalize=True)
        classified = client.classify(TEXTS, heads="classify", top_k=2)
        predicted = client.predict_tokens(TEXTS, top_k=3, head="mlm")
        tagged = client.run("ner", TEXTS, options={"aggregation": "simple"})
        rows_alone = runner.rows_computed - rows_before - rows
    # the backbone read each item once for all four heads; alone, once per head
    assert (rows, batches) == (len(TEXTS), 1)
    assert rows_alone == len(TEXTS) * len(HEADS)
    distinct = core.scheduler.metrics.registry.get_sample_value("headserve_backbone_rows_total")
    assert distinct == runner.rows_computed  # what operators see of the rows shared
    assert [(h.head, h.task) for h in result.heads] == [
        ("encode", "encode"),
        ("classify", "classify"),
        ("mlm", "mlm"),
        ("ner", "token_classification"),
    ]
    assert result.usage.input_tokens == encoded.usage.input_tokens  # shared rows count once
    assert len(result) == len(TEXTS)
    for i, per_item in enumerate(result):
        assert all(cell.ok for cell in per_item)
        vector = per_item[0].unwrap_as(Embedding).vector
        assert vector is not None
        np.testing.assert_allclose(vector, encoded.vectors[i], atol=TOL)
        label = per_item[1].unwrap_as(HeadClassification)
        alone = classified[i].heads[0]
        assert [s.label for s in label.labels] == [s.label for s in alone.labels]
        np.testing.assert_allclose(
            [s.probability for s in label.labels], [s.probability for s in alone.labels], atol=TOL
        )
        masks = per_item[2].unwrap_as(TokenPrediction).masks
        assert [(m.position, [c.token for c in m.candidates]) for m in masks] == [
            (m.position, [c.token for c in m.candidates]) for m in predicted[i].masks
        ]
        _same_entities(per_item[3].unwrap_as(HeadOutput)["entities"], tagged[i]["entities"])
    assert result.column(1)[2].head == "classify"


def test_question_answering_reads_a_pair_as_question_and_context(server: ServerThread) -> None:
    items = [("Where does Bob work?", TEXTS[1]), ("Who is in Paris?", TEXTS[0])]
    with Client(server.target) as client:
        result = client.run_heads(items, [AnswerQuestionHead("qa", top_k=2), "classify"])
        alone = client.answer_question(items, top_k=2, head="qa")
        pairs = client.classify(items, heads="classify")
    for i, per_item in enumerate(result):
        answer = per_item[0].unwrap_as(QuestionAnswer)
        assert [(a.start, a.end, a.text) for a in answer.answers] == [
            (a.start, a.end, a.text) for a in alone[i].answers
        ]
        np.testing.assert_allclose(
            [a.score for a in answer.answers], [a.score for a in alone[i].answers], atol=TOL
        )
        assert per_item[1].unwrap_as(HeadClassification).top == pairs[i].heads[0].top


def test_a_head_that_fails_fails_alone(server: ServerThread) -> None:
    items = [TEXTS[0], "no mask in this one", ("a", "pair")]
    heads = [
        "encode",
        "mlm",  # refuses item 1 (no mask token)
        "ner",  # refuses item 2 (the plugin takes no text pairs)
        "nope",  # not served: every item
        ClassifyHead("encode"),  # options of another task: every item
        EncodeHead("encode", dimensions=10_000),  # more than the model's size: every item
        GenericHead("ner", {"colour": "red"}),  # no such option: every item
        "qa",  # items 0 and 1 carry no context
    ]
    with Client(server.target) as client:
        result = client.run_heads(items, heads)
        assert [h.task for h in result.heads][3] == ""
        for per_item in result:
            assert per_item[0].ok, per_item[0].error
            embedding = per_item[0].unwrap_as(Embedding)
            assert embedding.vector is not None
        cells = result.column
        assert cells(1)[0].ok and cells(1)[2].ok is False
        _refused(cells(1)[1], InvalidArgumentError, "items[1].text")
        assert cells(2)[0].ok and cells(2)[1].ok
        _refused(cells(2)[2], InvalidArgumentError, "items[2].text_pair")
        for cell in cells(3):
            assert isinstance(cell.error, NotFoundError) and "nope" in str(cell.error)
        for cell in cells(4):
            _refused(cell, InvalidArgumentError, "heads[4].classify")
        for cell in cells(5):
            _refused(cell, InvalidArgumentError, "heads[5].encode.dimensions")
        for cell in cells(6):
            _refused(cell, InvalidArgumentError, "heads[6].params.colour")
        _refused(cells(7)[0], InvalidArgumentError, "items[0].text_pair")
        _refused(cells(7)[1], InvalidArgumentError, "items[1].text_pair")
        assert cells(7)[2].ok
        with pytest.raises(TypeError, match="returned Embedding, not HeadOutput"):
            result[0][0].unwrap_as(HeadOutput)
        # what fails the call fails it, naming the field; the server goes on serving
        with pytest.raises(InvalidArgumentError, match="items"):
            client.run_heads([], ["encode"])
        with pytest.raises(InvalidArgumentError, match="heads"):
            client.run_heads(TEXTS, [])
        empty = client.run_heads([TEXTS[0], ""], ["encode", "classify"])
        assert all(cell.ok for cell in empty[0])
        for cell in empty[1]:  # every head refuses an empty text, each for itself
            _refused(cell, InvalidArgumentError, "items[1].text")


def _refused(cell, kind, field: str) -> None:  # type: ignore[no-untyped-def]
    assert not cell.ok and isinstance(cell.error, kind), cell
    assert field in [v.field for v in cell.error.field_violations], cell.error


def test_the_same_head_twice_with_different_options(server: ServerThread) -> None:
    with Client(server.target) as client:
        result = client.run_heads(
            TEXTS, [EncodeHead("encode", dimensions=8), EncodeHead("encode", normalize=False)]
        )
    for short, full in result:
        short_vector = short.unwrap_as(Embedding).vector
        full_vector = full.unwrap_as(Embedding).vector
        assert short_vector is not None and full_vector is not None
        assert short_vector.shape == (8,)
        np.testing.assert_allclose(short_vector, full_vector[:8], atol=TOL)


def test_stream_answers_each_request_alone(server: ServerThread) -> None:
    batches = [Batch(TEXTS[:2], id="a"), Batch([], id="empty"), Batch(TEXTS[2:], id="b")]
    with Client(server.target) as client:
        replies = list(client.run_heads_stream(batches, ["encode", PredictTokensHead("mlm")]))
        whole = client.run_heads(TEXTS, ["encode", PredictTokensHead("mlm")])
    assert [r.id for r in replies] == ["a", "empty", "b"]
    assert [r.ok for r in replies] == [True, False, True]
    assert isinstance(replies[1].error, InvalidArgumentError)
    streamed = [*replies[0].unwrap(), *replies[2].unwrap()]
    for got, want in zip(streamed, whole, strict=True):
        got_vector, want_vector = (c[0].unwrap_as(Embedding).vector for c in (got, want))
        np.testing.assert_allclose(got_vector, want_vector, atol=TOL)  # type: ignore[arg-type]
        assert got[1].unwrap_as(TokenPrediction).masks[0].candidates[0].token == (
            want[1].unwrap_as(TokenPrediction).masks[0].candidates[0].token
        )


def test_async_client(server: ServerThread) -> None:
    async def main() -> None:
        async with AsyncClient(server.target) as client:
            result = await client.run_heads(TEXTS[:1], ["classify", "ner"])
            assert result[0][0].unwrap_as(HeadClassification).top is not None
            assert "entities" in result[0][1].unwrap_as(HeadOutput)
            replies = [r async for r in client.run_heads_stream([Batch(TEXTS, id="x")], ["encode"])]
            assert [len(r.unwrap()) for r in replies] == [len(TEXTS)]

    asyncio.run(main())
