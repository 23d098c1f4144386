"""The server end to end through the typed client, on a tiny BERT family of checkpoints."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from checkpoints import LABELS, MAX_LENGTH
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving import ServerThread

import headserve.v1
from headserve.client import (
    Batch,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from headserve.plugins.contract import HeadSpec
from headserve.server.loading import Settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LONG = " ".join(["The fox jumps over the dog."] * 20 + ["Bob works in Berlin at the zoo."])


def _settings(family, **extra) -> Settings:  # type: ignore[no-untyped-def]
    heads = (
        HeadSpec("encode", "encode"),
        HeadSpec("mlm", "mlm", family.mlm),
        HeadSpec("sentiment", "classify", family.classify),
        HeadSpec("topics", "classify", family.multilabel),
        HeadSpec("raw", "classify"),  # the backbone folder: no classifier weights
        HeadSpec("qa", "qa", family.qa),
    )
    return Settings(model_dir=family.backbone, heads=heads, device="cpu", **extra)


@pytest.fixture(scope="module")
def server(bert) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert))
    yield thread
    thread.stop()


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=30, max_retries=0) as c:
        yield c


def _health(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service))
            .status
        )


# --- readiness, health, reflection ---------------------------------------------------------------


def test_not_serving_and_unavailable_until_the_backbone_is_loaded(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(None)
    try:
        for service in ("", "headserve.v1.Encoder", "headserve.v1.Models"):
            assert _health(thread.target, service) == NOT_SERVING
        with (
            Client(thread.target, max_retries=0) as c,
            pytest.raises(UnavailableError, match="loading"),
        ):
            c.encode(["hello"])
        thread.ready(_settings(bert))
        assert _health(thread.target, "headserve.v1.Encoder") == SERVING
        with Client(thread.target) as c:
            assert len(c.encode(["hello"])) == 1
    finally:
        thread.stop()


def _contract_services() -> set[str]:
    """Every service of the headserve.v1 contract, read from its descriptors."""
    names: set[str] = set()
    for module in pkgutil.iter_modules(headserve.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"headserve.v1.{module.name}").DESCRIPTOR
            names |= {s.full_name for s in descriptor.services_by_name.values()}
    return names


def test_health_per_service(server: ServerThread) -> None:
    services = _contract_services()
    assert len(services) == 9
    for service in ["", *sorted(services)]:
        # Heads serves plugin tasks: this server has none (its RunHeads answers regardless);
        # it keeps no batch jobs (no --jobs-dir)
        off = ("headserve.v1.Heads", "headserve.v1.Jobs")
        want = NOT_SERVING if service in off else SERVING
        assert _health(server.target, service) == want, service


def test_a_task_with_no_usable_head_is_not_serving(bert) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        model_dir=bert.backbone,
        device="cpu",
        heads=(
            HeadSpec("encode", "encode"),
            HeadSpec("classify", "classify"),
            HeadSpec("qa", "qa"),
        ),
    )
    thread = ServerThread(settings)
    try:
        assert _health(thread.target, "headserve.v1.Encoder") == SERVING
        assert _health(thread.target, "headserve.v1.Classifier") == NOT_SERVING  # untrained only
        assert _health(thread.target, "headserve.v1.QuestionAnswerer") == NOT_SERVING
        assert (
            _health(thread.target, "headserve.v1.TokenPredictor") == NOT_SERVING
        )  # no head at all
    finally:
        thread.stop()


def test_reflection_lists_every_service(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    names = {s.name for s in reply.list_services_response.service}
    assert names - _contract_services() == {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert _contract_services() <= names


# --- every RPC ------------------------------------------------------------------------------------


def test_encode_batch_in_order_with_usage_and_timing(client: Client) -> None:
    texts = [
        "Alice works in Paris.",
        ("The fox", "jumps over the dog."),
        "I loved this film, truly.",
    ]
    result = client.encode(texts, pooling="cls")
    assert len(result) == 3 and all(
        e.vector is not None and e.vector.shape == (32,) for e in result
    )
    singles = [client.encode([t], pooling="cls")[0].vector for t in texts]
    for batched, single in zip(result, singles):
        np.testing.assert_allclose(batched.vector, single, atol=1e-5)
    tokens = client.tokenize(texts)
    assert result.usage.input_tokens == sum(len(t.ids) for t in tokens)
    assert result.timing.inference_ms > 0 and result.timing.queue_ms >= 0
    states = client.encode(["Alice works in Paris."], pooling="none")[0]
    assert states.token_states is not None and states.token_states.shape == (len(tokens[0].ids), 32)
    assert list(states.tokens) == list(tokens[0].tokens)


def test_predict_tokens(client: Client) -> None:
    result = client.predict_tokens(
        ["Alice works in [MASK] at the [MASK]."], top_k=4, return_logits=True
    )
    (prediction,) = result
    assert [m.span for m in prediction.masks] == [(15, 21), (29, 35)]
    assert all(len(m.candidates) == 4 for m in prediction.masks)
    assert prediction.logits is not None and prediction.logits.shape[0] == len(
        client.tokenize(["Alice works in [MASK] at the [MASK]."])[0].ids
    )
    probs = [c.probability for c in prediction.masks[0].candidates]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1


def test_classify_with_several_heads_in_one_pass(client: Client, server: ServerThread) -> None:
    assert server.core is not None
    before = server.core.runner.rows_computed
    result = client.classify(
        ["I loved this film.", "It was fine."], heads=["sentiment", "topics"], top_k=2
    )
    assert server.core.runner.rows_computed - before == 2  # two texts, one backbone row each
    for classification in result:
        sentiment, topics = classification.heads
        assert (sentiment.head, sentiment.multi_label, topics.head, topics.multi_label) == (
            "sentiment",
            False,
            "topics",
            True,
        )
        assert len(sentiment.labels) == 2 and {l.label for l in sentiment.labels} <= set(LABELS)
    default = client.classify(["I loved this film."], top_k=0)[0].heads[0]
    assert default.head == "sentiment" and sum(
        l.probability for l in default.labels
    ) == pytest.approx(1, abs=1e-5)


def test_answer_question_over_windows(client: Client) -> None:
    result = client.answer_question(
        [("Where does Bob work?", LONG), ("Who?", "Alice works.")], top_k=3, doc_stride=16
    )
    long_answer, short_answer = result
    assert long_answer.windows > 1 and short_answer.windows == 1
    for qa, context in ((long_answer, LONG), (short_answer, "Alice works.")):
        assert 1 <= len(qa.answers) <= 3
        for a in qa.answers:
            assert context[a.start : a.end] == a.text and not a.no_answer
    with_null = client.answer_question([("Who?", "Alice works.")], top_k=5, allow_no_answer=True)[0]
    assert sum(a.no_answer for a in with_null.answers) == 1


def test_model_info(client: Client, bert) -> None:  # type: ignore[no-untyped-def]
    info = client.model_info()
    assert (info.backbone.model_type, info.backbone.hidden_size, info.backbone.num_layers) == (
        "bert",
        32,
        2,
    )
    assert info.backbone.max_length == MAX_LENGTH and info.backbone.device == "cpu"
    assert info.backbone.dtype == "float32" and info.backbone.mask_token == "[MASK]"
    heads = {h.name: h for h in info.heads}
    assert (
        heads["sentiment"].labels == LABELS
        and heads["sentiment"].trained
        and heads["sentiment"].is_default
    )
    assert heads["topics"].multi_label and not heads["topics"].is_default
    assert not heads["raw"].trained and not heads["raw"].usable
    assert (
        heads["qa"].distribution == "headserve"
        and heads["qa"].plugin == "qa"
        and heads["qa"].version
    )


def test_tokenize(client: Client) -> None:
    (pair,) = client.tokenize([("Où est Zoë?", "Zoë works.")])
    assert pair.tokens[0] == "[CLS]" and pair.tokens[-1] == "[SEP]"
    assert set(pair.token_type_ids) == {0, 1}
    assert list(pair.sequence_ids).count(-1) == 3
    zoe = pair.tokens.index("zoe")  # uncased vocab strips the accent
    assert tuple(pair.offsets[zoe]) == (7, 10)  # code points in "Où est Zoë?"
    (bare,) = client.tokenize(["hello"], add_special_tokens=False)
    assert list(bare.tokens) == ["hello"]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field", "item"),
    [
        (lambda c: c.encode([]), "items", None),
        (lambda c: c.encode(["fine", "also fine", "  "]), "items[2].text", 2),
        (lambda c: c.encode(["fine", ("pair", "")]), "items[1].text_pair", 1),
        (lambda c: c.predict_tokens(["a [MASK]", "no mask here"]), "items[1].text", 1),
        (lambda c: c.predict_tokens(["a [MASK]"], top_k=-1), "options.top_k", None),
        (lambda c: c.encode(["ok", "word " * 200]), "items[1].text", 1),
        (lambda c: c.classify(["ok", ""], heads=["sentiment"]), "items[1].text", 1),
        (lambda c: c.classify(["ok"], heads=["sentiment", "sentiment"]), "options.heads", None),
        (lambda c: c.answer_question([("q", "context"), ("", "context")]), "items[1].question", 1),
        (lambda c: c.answer_question([("word " * 80, "context")]), "items[0].question", 0),
        (
            lambda c: c.answer_question([("q", "c")], max_answer_length=-3),
            "options.max_answer_length",
            None,
        ),
        (lambda c: c.tokenize(["ok", ""]), "items[1].text", 1),
    ],
)
def test_invalid_argument_names_field_and_item(client: Client, call, field, item) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgumentError) as raised:
        call(client)
    assert raised.value.field == field
    assert raised.value.item == item
    assert field in raised.value.message


def test_truncate_accepts_what_is_too_long(client: Client) -> None:
    long = "word " * 200
    with pytest.raises(InvalidArgumentError, match="truncate"):
        client.encode([long])
    assert client.encode([long], truncate=True)[0].vector is not None


def test_unknown_head_is_not_found(client: Client) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        client.classify(["x"], heads=["nope"])
    with pytest.raises(NotFoundError):
        client.encode(["x"], head="sentiment")  # a head of another task


def test_untrained_head_is_refused_with_the_fix(client: Client) -> None:
    with pytest.raises(FailedPreconditionError) as raised:
        client.classify(["x"], heads=["raw"])
    assert "--allow-untrained" in raised.value.message and "raw" in raised.value.message


def test_allow_untrained_serves_random_heads(bert) -> None:  # type: ignore[no-untyped-def]
    thread = ServerThread(_settings(bert, allow_untrained=True))
    try:
        with Client(thread.target) as c:
            (raw,) = c.classify(["x"], heads=["raw"])[0].heads
            assert len(raw.labels) == 2
            assert [h.usable for h in c.model_info().heads if h.name == "raw"] == [True]
    finally:
        thread.stop()


def test_the_server_keeps_serving_after_errors(client: Client) -> None:
    for _ in range(3):
        with pytest.raises(InvalidArgumentError):
            client.encode([""])
    assert len(client.encode(["still fine"])) == 1


# --- streams --------------------------------------------------------------------------------------


STREAMS = {
    "encode": (lambda c, b: c.encode_stream(b), "a text", ""),
    "predict_tokens": (lambda c, b: c.predict_tokens_stream(b), "a [MASK] text", "no mask"),
    "classify": (lambda c, b: c.classify_stream(b, heads=["sentiment"]), "a text", ""),
    "answer_question": (
        lambda c, b: c.answer_question_stream(b),
        ("Who?", "Alice works."),
        ("", "x"),
    ),
}


@pytest.mark.parametrize("kind", STREAMS)
def test_stream_bad_request_in_the_middle(client: Client, kind: str) -> None:
    call, good, bad = STREAMS[kind]
    batches = [Batch([good, good], id=f"r{i}") for i in range(6)]
    batches[2] = Batch([good, bad], id="bad")
    results = list(call(client, batches))
    assert [r.id for r in results] == [b.id for b in batches]
    for r in results:
        if r.id == "bad":
            assert isinstance(r.error, InvalidArgumentError) and r.error.item == 1
            assert r.result is None
        else:
            assert r.error is None and r.result is not None and len(r.result) == 2
