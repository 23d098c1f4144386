"""Ranker.Rerank: cross-encoder heads (classify heads on (query, document) pairs) scored
exactly as transformers' AutoModelForSequenceClassification scores the pairs, encode heads
by cosine; order, top_n, return_documents, the default ranker, errors and the stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from serving import ServerThread
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from headserve.client import Client, InvalidArgumentError, NotFoundError
from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings
from headserve.v1 import ranker_pb2, ranker_pb2_grpc

QUERY = "Where does Bob work?"
DOCUMENTS = [
    "Bob works in Berlin at the zoo.",
    "The quick brown fox jumps over the lazy dog.",
    "Alice works in Paris at the bank.",
    "A great movie with a wonderful cast.",
    "Who works in Paris? What does the fox do?",
]
TOLERANCE = 1e-4  # the backbone runs on ONNX Runtime: within 1e-4 of torch


def _cross_encoder(family, folder: Path, labels: tuple[str, ...]) -> Path:  # type: ignore[no-untyped-def]
    """A cross-encoder on the family's backbone weights. A tiny random model's pooled pairs
    differ little: its classifier is sharpened, and centred on these pairs, so that their
    scores spread (and the order is worth checking)."""
    torch.manual_seed(len(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        family.backbone,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(family.backbone)
    pairs = tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        model.classifier.weight.mul_(10000.0)
        model.classifier.bias.sub_(model(**pairs).logits.mean(0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoders(bert, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("cross-encoders")
    return {
        "one": _cross_encoder(bert, root / "one", ("score",)),
        "two": _cross_encoder(bert, root / "two", ("irrelevant", "relevant")),
    }


@pytest.fixture(scope="module")
def server(bert, encoders) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode"),
        HeadSpec("sigmoid", "classify", encoders["one"]),
        HeadSpec("logit", "classify", encoders["one"], {"rerank_score": "logit"}),
        HeadSpec("pair", "classify", encoders["two"]),
        HeadSpec("three", "classify", bert.classify),  # three labels: cannot tell which ranks
    )
    thread = ServerThread(Settings(model_dir=bert.backbone, heads=heads, device="cpu"))
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, max_retries=0) as client:
        yield client


def _logits(folder: Path, documents: list[str]) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        batch = tokenizer([QUERY] * len(documents), documents, padding=True, return_tensors="pt")
        return model(**batch).logits


@pytest.mark.parametrize(
    ("head", "folder", "score"),
    [
        ("sigmoid", "one", lambda logits: logits[:, 0].sigmoid()),
        ("logit", "one", lambda logits: logits[:, 0]),
        ("pair", "two", lambda logits: logits.softmax(-1)[:, 1]),
    ],
)
def test_cross_encoder_scores_equal_transformers(client, encoders, head, folder, score) -> None:  # type: ignore[no-untyped-def]
    want = score(_logits(encoders[folder], DOCUMENTS)).numpy()
    result = client.rerank(QUERY, DOCUMENTS, head=head)
    assert result.head == head
    assert sorted(d.index for d in result) == list(range(len(DOCUMENTS)))
    got = np.array([d.score for d in sorted(result, key=lambda d: d.index)])
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    assert [d.index for d in result] == list(np.argsort(-want, kind="stable"))  # best first
    assert np.diff(np.sort(want)).min() > 10 * TOLERANCE  # apart: the order is no accident


def test_top_n_and_return_documents(client) -> None:  # type: ignore[no-untyped-def]
    every = client.rerank(QUERY, DOCUMENTS, head="sigmoid")
    best = client.rerank(QUERY, DOCUMENTS, head="sigmoid", top_n=2, return_documents=True)
    assert [d.index for d in best] == [d.index for d in every][:2]
    assert [d.document for d in best] == [DOCUMENTS[d.index] for d in best]
    assert all(d.document is None for d in every)
    assert best.usage.input_tokens == every.usage.input_tokens > 0  # every pair was scored


def test_an_encode_head_ranks_by_cosine(client) -> None:  # type: ignore[no-untyped-def]
    vectors = client.encode([QUERY, *DOCUMENTS], normalize=True).vectors
    want = vectors[1:] @ vectors[0]
    result = client.rerank(QUERY, DOCUMENTS, head="encode")
    got = np.array([d.score for d in sorted(result, key=lambda d: d.index)])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert [d.index for d in result] == list(np.argsort(-want, kind="stable"))


def test_the_default_ranker(bert, encoders) -> None:  # type: ignore[no-untyped-def]
    """The first classify head configured to rank, else the default encode head."""
    plain = (HeadSpec("encode", "encode"), HeadSpec("pair", "classify", encoders["two"]))
    chosen = (*plain, HeadSpec("ce", "classify", encoders["one"], {"rerank_score": "sigmoid"}))
    for heads, expected in ((plain, "encode"), (chosen, "ce")):
        thread = ServerThread(Settings(model_dir=bert.backbone, heads=heads, device="cpu"))
        try:
            with Client(thread.target, max_retries=0) as client:
                assert client.rerank(QUERY, DOCUMENTS[:2]).head == expected
        finally:
            thread.stop()


@pytest.mark.parametrize(
    ("query", "documents", "head", "field"),
    [
        ("  ", DOCUMENTS, None, "query"),
        (QUERY, [], None, "documents"),
        (QUERY, [DOCUMENTS[0], " "], "sigmoid", "documents[1]"),
        (QUERY, [DOCUMENTS[0], " "], "encode", "documents[1]"),
        (QUERY, [DOCUMENTS[0], "word " * 600], "sigmoid", "documents[1]"),
        (QUERY, DOCUMENTS, "three", "options.head"),
    ],
)
def test_bad_requests_name_the_field(client, query, documents, head, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError) as refused:
        client.rerank(query, documents, head=head)
    assert refused.value.field == field, str(refused.value)
    assert client.rerank(QUERY, DOCUMENTS[:2]).results  # and the server goes on


def test_the_documents_count_against_the_request_item_limit(bert) -> None:  # type: ignore[no-untyped-def]
    from headserve.server.core.limits import RequestLimits

    heads = (HeadSpec("encode", "encode"),)
    limits = RequestLimits(max_request_items=3)
    thread = ServerThread(
        Settings(model_dir=bert.backbone, heads=heads, device="cpu", request_limits=limits)
    )
    try:
        with Client(thread.target, max_retries=0) as client:
            assert len(client.rerank(QUERY, DOCUMENTS[:3])) == 3  # the query is not an item
            with pytest.raises(InvalidArgumentError) as refused:
                client.rerank(QUERY, DOCUMENTS[:4])
            assert refused.value.field == "documents" and "--max-request-items" in str(
                refused.value
            )
    finally:
        thread.stop()


def test_a_long_document_is_cut_when_asked(client) -> None:  # type: ignore[no-untyped-def]
    result = client.rerank(QUERY, [DOCUMENTS[0], "word " * 600], head="sigmoid", truncate=True)
    assert len(result) == 2


def test_an_unknown_head_is_not_found(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError, match="no classify or encode head named 'nope'"):
        client.rerank(QUERY, DOCUMENTS, head="nope")


def test_a_bad_rerank_score_fails_the_head_at_load(bert, encoders) -> None:  # type: ignore[no-untyped-def]
    spec = HeadSpec("ce", "classify", encoders["two"], {"rerank_score": "label:maybe"})
    with pytest.raises(Exception, match="rerank_score='label:maybe'"):
        ServerThread(Settings(model_dir=bert.backbone, heads=(spec,), require_heads=("ce",)))


def test_the_stream_answers_each_request_alone(server: ServerThread) -> None:
    options = ranker_pb2.RerankOptions(head="sigmoid", top_n=1)
    requests = [
        ranker_pb2.RerankRequest(id="a", query=QUERY, documents=DOCUMENTS, options=options),
        ranker_pb2.RerankRequest(id="b", query="", documents=DOCUMENTS, options=options),
        ranker_pb2.RerankRequest(
            id="c", query=QUERY, documents=DOCUMENTS, options=ranker_pb2.RerankOptions(top_n=-1)
        ),
        ranker_pb2.RerankRequest(id="d", query=QUERY, documents=DOCUMENTS[:3], options=options),
    ]
    with grpc.insecure_channel(server.target) as channel:
        replies = list(ranker_pb2_grpc.RankerStub(channel).RerankStream(iter(requests)))
    assert [r.id for r in replies] == ["a", "b", "c", "d"]
    assert [r.WhichOneof("outcome") for r in replies] == ["response", "error", "error", "response"]
    assert "query" in replies[1].error.message and "options.top_n" in replies[2].error.message
    assert len(replies[0].response.results) == len(replies[3].response.results) == 1
