"""Every RPC, fuzzed through raw gRPC stubs (the typed client checks some inputs itself).

The property of a unary call: a reply shaped like the request (one result per item, in
order, each consistent with the item and options) or an error with a documented code
(INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAVAILABLE,
DEADLINE_EXCEEDED) and a message; never INTERNAL or UNKNOWN. After every case the
server still answers a known-good call.

A stream of good and bad requests: exactly one reply per request, in order, with its
id; each a response (checked as above) or an error with a documented code; the stream
itself ends OK. Stream requests are kept under the message limit: a message over it
ends the whole stream (gRPC's own doing, not a per-request error).

Bytes that are not a valid message of the method are gRPC's to refuse (any code), after
which the server serves normally.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import strategies as S
from checkpoints import LABELS, MAX_LENGTH, NER_LABELS
from google.protobuf import json_format
from google.rpc import code_pb2
from hypothesis import example, given
from hypothesis import strategies as st
from outcomes import Outcomes
from serving import ServerThread

from headserve.server.tasks import TASKS, services
from headserve.v1 import (
    admin_pb2,
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    heads_pb2,
    heads_pb2_grpc,
    jobs_pb2,
    models_pb2,
    models_pb2_grpc,
    question_answerer_pb2,
    question_answerer_pb2_grpc,
    ranker_pb2,
    ranker_pb2_grpc,
    token_predictor_pb2,
    token_predictor_pb2_grpc,
)

TIMEOUT = 60.0
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
DOCUMENTED_IN_STREAM = {  # google.rpc codes, as ints
    code_pb2.INVALID_ARGUMENT,
    code_pb2.NOT_FOUND,
    code_pb2.FAILED_PRECONDITION,
    code_pb2.RESOURCE_EXHAUSTED,
    code_pb2.UNAVAILABLE,
    code_pb2.DEADLINE_EXCEEDED,
}
MASK = "[MASK]"
ALICE = common_pb2.TextInput(text="Alice works in Paris.")
# Found by this suite (regressions, tried first): options holding NaN or infinity, and a
# text_pair set to "".
NAN_OPTIONS = S.Case(
    heads_pb2.RunRequest(
        head="ner", items=[ALICE], options=S.structs({"return_logits": float("nan")})
    )
)
INFINITE_OPTIONS = S.Case(
    heads_pb2.RunRequest(head="ner", items=[ALICE], options=S.structs({"x": [float("inf")]}))
)
EMPTY_PAIR = S.Case(
    models_pb2.TokenizeRequest(items=[common_pb2.TextInput(text="hello", text_pair="")])
)


@dataclass(frozen=True)
class Model:
    hidden_size: int
    vocab_size: int
    max_length: int


@dataclass(frozen=True, repr=False)
class Rpc:
    """One unary RPC: its stub method, a check of a reply against its request, a known-good
    request, and its stream twin."""

    name: str
    call: Callable[..., Any]
    check: Callable[[Any, Any, Model], None]
    good: Any
    stream: Callable[..., Any] | None = None

    def __repr__(self) -> str:  # short, in hypothesis' report of a failing case
        return f"Rpc({self.name})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# --- reply checks: the reply is shaped like the request ---------------------------------------


def _probabilities(values: list[float], *, sorted_desc: bool = True) -> None:
    assert all(math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6 for p in values), values
    if sorted_desc:
        assert all(a >= b - 1e-6 for a, b in zip(values, values[1:])), values


def _tensor_shape(tensor: common_pb2.Tensor, dtype: int, itemsize: int) -> list[int]:
    assert tensor.dtype == dtype
    assert len(tensor.data) == math.prod(tensor.shape) * itemsize
    return list(tensor.shape)


def _floats(tensor: common_pb2.Tensor) -> tuple[float, ...]:
    return struct.unpack(f"<{len(tensor.data) // 4}f", tensor.data)


def _usage_timing(reply: Any, items: int) -> None:
    assert reply.usage.input_tokens >= 2 * items  # at least [CLS] and [SEP] an item
    timing = reply.timing
    assert math.isfinite(timing.queue_ms) and timing.queue_ms >= 0, timing
    assert math.isfinite(timing.inference_ms) and timing.inference_ms >= 0, timing


def _json(struct: Any) -> Any:
    try:
        return json_format.MessageToDict(struct)
    except json_format.Error as exc:  # NaN or infinity: should have been refused
        raise AssertionError(f"answered OK to options with no JSON form: {exc}") from exc


def check_encode(request: Any, reply: Any, model: Model) -> None:
    assert len(reply.results) == len(request.items)
    options = request.options
    for embedding in reply.results:
        if embedding.HasField("sparse"):  # the sparse head
            sparse = embedding.sparse
            weights = list(sparse.weights)
            assert len(sparse.token_ids) == len(sparse.tokens) == len(weights)
            assert all(math.isfinite(w) and w > options.sparse_min_weight for w in weights)
            assert weights == sorted(weights, reverse=True)
            assert not options.sparse_top_k or len(weights) <= options.sparse_top_k
            assert all(0 <= i < model.vocab_size for i in sparse.token_ids)
            continue
        if options.pooling == encoder_pb2.POOLING_NONE:
            assert not embedding.vector
            shape = _tensor_shape(embedding.token_states, common_pb2.DTYPE_FLOAT32, 4)
            assert shape == [len(embedding.tokens), model.hidden_size]
            assert 2 <= len(embedding.tokens) <= model.max_length
            assert all(math.isfinite(v) for v in _floats(embedding.token_states))
        else:
            assert len(embedding.vector) == (options.dimensions or model.hidden_size)
            assert all(math.isfinite(v) for v in embedding.vector)
            if options.HasField("normalize") and options.normalize:
                assert math.isclose(math.hypot(*embedding.vector), 1.0, abs_tol=1e-4)
    _usage_timing(reply, len(request.items))
    if options.pooling == encoder_pb2.POOLING_NONE:
        assert reply.usage.input_tokens == sum(len(e.tokens) for e in reply.results)


def check_rerank(request: Any, reply: Any, model: Model) -> None:
    documents, top_n = request.documents, request.options.top_n
    assert len(reply.results) == (min(top_n, len(documents)) if top_n else len(documents))
    indices = [r.index for r in reply.results]
    assert len(set(indices)) == len(indices) and all(0 <= i < len(documents) for i in indices)
    scores = [r.score for r in reply.results]
    assert all(math.isfinite(s) for s in scores) and scores == sorted(scores, reverse=True)
    for result in reply.results:
        shown = documents[result.index] if request.options.return_documents else ""
        assert result.document == shown
    assert reply.head in {"rank", "encode"}
    _usage_timing(reply, len(documents))


def check_predict(request: Any, reply: Any, model: Model) -> None:
    assert len(reply.results) == len(request.items)
    top_k = min(request.options.top_k or 5, model.vocab_size)
    for item, prediction in zip(request.items, reply.results):
        assert prediction.masks, "an item without a mask must be refused, not answered"
        texts = [item.text, *([item.text_pair] if item.HasField("text_pair") else [])]
        if not request.options.truncate:
            assert len(prediction.masks) == sum(t.count(MASK) for t in texts), "one per mask"
        positions = [m.position for m in prediction.masks]
        assert positions == sorted(set(positions)) and 0 < positions[0]
        assert positions[-1] < model.max_length
        for mask in prediction.masks:
            span = mask.span
            assert any(t[span.start : span.end] == MASK for t in texts), (span, texts)
            assert len(mask.candidates) == top_k
            _probabilities([c.probability for c in mask.candidates])
            assert all(0 <= c.token_id < model.vocab_size and c.token for c in mask.candidates)
        if request.options.return_logits:
            rows, vocab = _tensor_shape(prediction.logits, common_pb2.DTYPE_FLOAT32, 4)
            assert vocab == model.vocab_size and positions[-1] < rows <= model.max_length
        else:
            assert not prediction.HasField("logits")
    _usage_timing(reply, len(request.items))


def check_classify(request: Any, reply: Any, model: Model) -> None:
    assert len(reply.results) == len(request.items)
    options = request.options
    heads = [h or "classify" for h in options.heads] or ["classify"]
    count = min(options.top_k, len(LABELS)) if options.top_k else len(LABELS)
    for classification in reply.results:
        assert [h.head for h in classification.heads] == heads
        for head in classification.heads:
            labels = [s.label for s in head.labels]
            assert len(labels) == count and len(set(labels)) == count
            assert set(labels) <= set(LABELS)
            probabilities = [s.probability for s in head.labels]
            _probabilities(probabilities)
            if count == len(LABELS) and not head.multi_label:
                assert math.isclose(sum(probabilities), 1.0, abs_tol=1e-4)
    _usage_timing(reply, len(request.items))


def check_qa(request: Any, reply: Any, model: Model) -> None:
    assert len(reply.results) == len(request.items)
    options = request.options
    for item, result in zip(request.items, reply.results):
        assert result.windows >= 1
        assert len(result.answers) <= (options.top_k or 1)
        _probabilities([a.score for a in result.answers])
        for answer in result.answers:
            if answer.no_answer:
                assert options.allow_no_answer
                assert (answer.text, answer.start, answer.end) == ("", 0, 0)
            else:
                assert 0 <= answer.start <= answer.end <= len(item.context), answer
                assert item.context[answer.start : answer.end] == answer.text, answer
        spans = [(a.start, a.end) for a in result.answers if not a.no_answer]
        assert len(spans) == len(set(spans)), "a span is answered once"
    _usage_timing(reply, len(request.items))


def check_run(request: Any, reply: Any, model: Model) -> None:
    assert (reply.head, reply.task) == ("ner", "token_classification")
    assert len(reply.results) == len(request.items)
    options = _json(request.options)
    ignore = {label.strip() for label in options.get("ignore_labels", "O").split(",")}
    simple = options.get("aggregation", "simple") == "simple"
    kinds = {label.split("-", 1)[-1] for label in NER_LABELS} if simple else set(NER_LABELS)
    for item, output in zip(request.items, reply.results):
        fields = _json(output.fields)
        assert set(fields) == {"entities", "tokens"}
        tokens = fields["tokens"]
        # a text longer than the window is read in windows: its tokens can pass the window,
        # one character at least each; truncated, it is cut to the window
        most = model.max_length if request.truncate else len(item.text) + 2
        assert tokens == int(tokens) and 2 <= tokens <= max(most, 2), (tokens, most)
        for entity in fields["entities"]:
            assert set(entity) == {"label", "score", "start", "end", "text"}
            assert entity["label"] in kinds and entity["label"] not in ignore, entity
            assert 0 <= entity["start"] <= entity["end"] <= len(item.text), entity
            assert item.text[int(entity["start"]) : int(entity["end"])] == entity["text"]
            _probabilities([entity["score"]])
        if options.get("return_logits", False):
            assert set(output.tensors) == {"logits"}
            shape = _tensor_shape(output.tensors["logits"], common_pb2.DTYPE_FLOAT32, 4)
            assert shape == [tokens, len(NER_LABELS)]
        else:
            assert not output.tensors
    _usage_timing(reply, len(request.items))
    tokens = sum(_json(output.fields)["tokens"] for output in reply.results)
    assert reply.usage.input_tokens == tokens


# The result each task's head answers with in a RunHeads cell.
RESULT_OF_TASK = {
    "encode": "embedding",
    "classify": "classification",
    "mlm": "prediction",
    "qa": "answer",
    "token_classification": "output",
}


def check_run_heads(request: Any, reply: Any, model: Model) -> None:
    """Per item one cell per head: an error (documented, never INTERNAL), or a result of
    the head's task that passes that task's own RPC's checks."""
    assert [h.head for h in reply.heads] == [c.head for c in request.heads]
    assert len(reply.results) == len(request.items)
    for item, per_item in zip(request.items, reply.results, strict=True):
        assert len(per_item.heads) == len(request.heads)
        for call, ran, cell in zip(request.heads, reply.heads, per_item.heads, strict=True):
            kind = cell.WhichOneof("result")
            if kind == "error":
                assert cell.error.code in DOCUMENTED_IN_STREAM, cell.error
                assert cell.error.message
                continue
            assert ran.task and kind == RESULT_OF_TASK[ran.task], (ran, kind)
            _check_cell(request, call, item, cell, model)
    assert math.isfinite(reply.timing.queue_ms) and reply.timing.queue_ms >= 0


def _check_cell(request: Any, call: Any, item: Any, cell: Any, model: Model) -> None:
    """A cell held to the checks of its task's own RPC, as a one-item call of it."""
    truncate = request.truncate
    if cell.HasField("embedding"):
        options = encoder_pb2.EncodeOptions()
        options.CopyFrom(call.encode)
        e = cell.embedding
        tokens = len(e.tokens) if options.pooling == encoder_pb2.POOLING_NONE else 2
        check_encode(
            encoder_pb2.EncodeRequest(items=[item], options=options),
            encoder_pb2.EncodeResponse(results=[e], usage=common_pb2.Usage(input_tokens=tokens)),
            model,
        )
    elif cell.HasField("classification"):
        options = classifier_pb2.ClassifyOptions(heads=[call.head], top_k=call.classify.top_k)
        response = classifier_pb2.Classification(heads=[cell.classification])
        check_classify(
            classifier_pb2.ClassifyRequest(items=[item], options=options),
            classifier_pb2.ClassifyResponse(
                results=[response], usage=common_pb2.Usage(input_tokens=2)
            ),
            model,
        )
    elif cell.HasField("prediction"):
        options = token_predictor_pb2.PredictTokensOptions()
        options.CopyFrom(call.predict_tokens)
        options.truncate = options.truncate or truncate
        check_predict(
            token_predictor_pb2.PredictTokensRequest(items=[item], options=options),
            token_predictor_pb2.PredictTokensResponse(
                results=[cell.prediction], usage=common_pb2.Usage(input_tokens=2)
            ),
            model,
        )
    elif cell.HasField("answer"):
        pair = question_answerer_pb2.QuestionContext(question=item.text, context=item.text_pair)
        check_qa(
            question_answerer_pb2.AnswerQuestionRequest(items=[pair], options=call.answer_question),
            question_answerer_pb2.AnswerQuestionResponse(
                results=[cell.answer], usage=common_pb2.Usage(input_tokens=2)
            ),
            model,
        )
    else:
        tokens = int(_json(cell.output.fields)["tokens"])
        check_run(
            heads_pb2.RunRequest(head="ner", items=[item], options=call.params),
            heads_pb2.RunResponse(
                head="ner",
                task="token_classification",
                results=[cell.output],
                usage=common_pb2.Usage(input_tokens=tokens),
            ),
            model,
        )


def check_tokenize(request: Any, reply: Any, model: Model) -> None:
    assert len(reply.results) == len(request.items)
    special = request.add_special_tokens if request.HasField("add_special_tokens") else True
    for item, result in zip(request.items, reply.results):
        n = len(result.ids)
        lengths = (len(result.tokens), len(result.offsets), len(result.token_type_ids))
        assert lengths == (n, n, n) and len(result.sequence_ids) == n
        if request.truncate:
            assert n <= model.max_length
        pair = item.HasField("text_pair")
        specials = sum(s == -1 for s in result.sequence_ids)
        expected = (3 if pair else 2) if special else 0
        assert specials == expected, f"{specials} special tokens, not {expected}: text_pair is " + (
            "set, so a pair ([CLS] a [SEP] b [SEP])" if pair else "unset"
        )
        assert all(0 <= i < model.vocab_size for i in result.ids)
        texts = {0: item.text, 1: item.text_pair}
        for sequence, span, types in zip(
            result.sequence_ids, result.offsets, result.token_type_ids
        ):
            if sequence == -1:
                assert (span.start, span.end) == (0, 0)
                continue
            assert sequence in ((0, 1) if pair else (0,))
            assert types == sequence
            assert 0 <= span.start <= span.end <= len(texts[sequence]), (span, sequence)


# --- calling ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def channel(fuzz_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.target) as channel:
        yield channel


@pytest.fixture(scope="session")
def rpcs(channel: grpc.Channel) -> dict[str, Rpc]:
    encoder = encoder_pb2_grpc.EncoderStub(channel)
    predictor = token_predictor_pb2_grpc.TokenPredictorStub(channel)
    classifier = classifier_pb2_grpc.ClassifierStub(channel)
    answerer = question_answerer_pb2_grpc.QuestionAnswererStub(channel)
    heads = heads_pb2_grpc.HeadsStub(channel)
    models = models_pb2_grpc.ModelsStub(channel)
    ranker = ranker_pb2_grpc.RankerStub(channel)
    one = [ALICE]
    found = [
        Rpc(
            "Encode",
            encoder.Encode,
            check_encode,
            encoder_pb2.EncodeRequest(items=one),
            encoder.EncodeStream,
        ),
        Rpc(
            "PredictTokens",
            predictor.PredictTokens,
            check_predict,
            token_predictor_pb2.PredictTokensRequest(
                items=[common_pb2.TextInput(text=f"Alice works in {MASK}.")]
            ),
            predictor.PredictTokensStream,
        ),
        Rpc(
            "Classify",
            classifier.Classify,
            check_classify,
            classifier_pb2.ClassifyRequest(items=one),
            classifier.ClassifyStream,
        ),
        Rpc(
            "AnswerQuestion",
            answerer.AnswerQuestion,
            check_qa,
            question_answerer_pb2.AnswerQuestionRequest(
                items=[question_answerer_pb2.QuestionContext(question="Who?", context="Alice.")]
            ),
            answerer.AnswerQuestionStream,
        ),
        Rpc(
            "Run",
            heads.Run,
            check_run,
            heads_pb2.RunRequest(head="ner", items=one),
            heads.RunStream,
        ),
        Rpc(
            "RunHeads",
            heads.RunHeads,
            check_run_heads,
            heads_pb2.RunHeadsRequest(
                items=[common_pb2.TextInput(text=f"Alice works in {MASK}.")],
                heads=[
                    heads_pb2.HeadCall(head=name) for name in ("encode", "classify", "mlm", "ner")
                ],
            ),
            heads.RunHeadsStream,
        ),
        Rpc("Tokenize", models.Tokenize, check_tokenize, models_pb2.TokenizeRequest(items=one)),
        Rpc(
            "Rerank",
            ranker.Rerank,
            check_rerank,
            ranker_pb2.RerankRequest(query="Who?", documents=["Alice.", "Bob."]),
            ranker.RerankStream,
        ),
    ]
    return {rpc.name: rpc for rpc in found}


@pytest.fixture(scope="session")
def model(channel: grpc.Channel) -> Model:
    info = models_pb2_grpc.ModelsStub(channel).GetModelInfo(
        models_pb2.GetModelInfoRequest(), timeout=TIMEOUT
    )
    backbone = info.backbone
    return Model(backbone.hidden_size, backbone.vocab_size, backbone.max_length)


def still_serving(rpc: Rpc, model: Model) -> None:
    """The server answers a known-good call of `rpc` correctly."""
    reply = rpc.call(rpc.good, timeout=TIMEOUT)
    rpc.check(rpc.good, reply, model)


def fuzz_unary(rpc: Rpc, case: S.Case, timeout: float, model: Model, outcomes: Outcomes) -> None:
    request = case.message
    try:
        reply = rpc.call(request, timeout=timeout)
    except grpc.RpcError as error:
        code = error.code()
        outcomes.call(rpc.name, code.name)
        assert code in DOCUMENTED, f"{rpc.name} ended {code.name}: {error.details()}"
        assert error.details(), f"{rpc.name} ended {code.name} with no message"
    else:
        outcomes.call(rpc.name, "OK")
        rpc.check(request, reply, model)
    still_serving(rpc, model)


def _code_name(code: int) -> str:
    try:
        return code_pb2.Code.Name(code)
    except ValueError:
        return str(code)


def fuzz_stream(rpc: Rpc, cases: list[S.Case], model: Model, outcomes: Outcomes) -> None:
    assert rpc.stream is not None
    requests = [case.message for case in cases]
    stream_name = f"{rpc.name}Stream"
    try:
        replies = list(rpc.stream(iter(requests), timeout=TIMEOUT))
    except grpc.RpcError as error:
        outcomes.call(stream_name, error.code().name)
        raise AssertionError(
            f"{stream_name} ended {error.code().name}: {error.details()}"
        ) from None
    outcomes.call(stream_name, "OK")
    assert len(replies) == len(requests), "one reply per request"
    for request, reply in zip(requests, replies):
        assert reply.id == request.id, "replies in request order, each with its id"
        outcome = reply.WhichOneof("outcome")
        if outcome == "response":
            outcomes.request(stream_name, "response")
            rpc.check(request, reply.response, model)
        else:
            assert outcome == "error", "a reply carries a response or an error"
            code = reply.error.code
            outcomes.request(stream_name, _code_name(code))
            assert code in DOCUMENTED_IN_STREAM, (
                f"{stream_name} request {request.id!r} got {_code_name(code)}: "
                f"{reply.error.message}"
            )
            assert reply.error.message, f"{_code_name(code)} with no message"
    still_serving(rpc, model)


# --- the properties ---------------------------------------------------------------------------


def test_get_model_info(channel: grpc.Channel, outcomes: Outcomes) -> None:
    info = models_pb2_grpc.ModelsStub(channel).GetModelInfo(
        models_pb2.GetModelInfoRequest(), timeout=TIMEOUT
    )
    outcomes.call("GetModelInfo", "OK")
    assert {h.name: h.usable for h in info.heads} == dict.fromkeys(S.HEADS, True)
    assert not info.failed_plugins
    assert info.backbone.max_length == MAX_LENGTH == S.WINDOW
    assert info.backbone.mask_token == MASK
    limits = info.limits
    assert (limits.max_request_items, limits.max_item_chars) == (
        S.LIMITS.max_request_items,
        S.LIMITS.max_item_chars,
    )
    assert (limits.max_item_tokens, limits.max_message_bytes) == (
        S.LIMITS.max_item_tokens,
        S.LIMITS.max_message_bytes,
    )


@given(case=S.encode_requests(), timeout=S.timeouts())
def test_encode(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["Encode"], case, timeout, model, outcomes)


@given(case=S.predict_requests(), timeout=S.timeouts())
def test_predict_tokens(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["PredictTokens"], case, timeout, model, outcomes)


@given(case=S.classify_requests(), timeout=S.timeouts())
def test_classify(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["Classify"], case, timeout, model, outcomes)


@given(case=S.qa_requests(), timeout=S.timeouts())
def test_answer_question(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["AnswerQuestion"], case, timeout, model, outcomes)


@given(case=S.run_requests(), timeout=S.timeouts())
@example(case=NAN_OPTIONS, timeout=TIMEOUT)
@example(case=INFINITE_OPTIONS, timeout=TIMEOUT)
def test_heads_run(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["Run"], case, timeout, model, outcomes)


@given(case=S.tokenize_requests(), timeout=S.timeouts())
@example(case=EMPTY_PAIR, timeout=TIMEOUT)
def test_tokenize(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["Tokenize"], case, timeout, model, outcomes)


@given(cases=S.streams(S.encode_requests(oversize=False)))
def test_encode_stream(
    cases: list[S.Case], rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_stream(rpcs["Encode"], cases, model, outcomes)


@given(cases=S.streams(S.predict_requests(oversize=False)))
def test_predict_tokens_stream(
    cases: list[S.Case], rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_stream(rpcs["PredictTokens"], cases, model, outcomes)


@given(cases=S.streams(S.classify_requests(oversize=False)))
def test_classify_stream(
    cases: list[S.Case], rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_stream(rpcs["Classify"], cases, model, outcomes)


@given(cases=S.streams(S.qa_requests(oversize=False)))
def test_answer_question_stream(
    cases: list[S.Case], rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_stream(rpcs["AnswerQuestion"], cases, model, outcomes)


@given(cases=S.streams(S.run_requests(oversize=False)))
@example(cases=[S.Case(heads_pb2.RunRequest(id="good", head="ner", items=[ALICE])), NAN_OPTIONS])
def test_heads_run_stream(
    cases: list[S.Case], rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_stream(rpcs["Run"], cases, model, outcomes)


@given(case=S.run_heads_requests(), timeout=S.timeouts())
def test_run_heads(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["RunHeads"], case, timeout, model, outcomes)


@given(cases=S.streams(S.run_heads_requests(oversize=False)))
def test_run_heads_stream(
    cases: list[S.Case], rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_stream(rpcs["RunHeads"], cases, model, outcomes)


@given(case=S.rerank_requests(), timeout=S.timeouts())
def test_rerank(
    case: S.Case, timeout: float, rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_unary(rpcs["Rerank"], case, timeout, model, outcomes)


@given(cases=S.streams(S.rerank_requests(oversize=False)))
def test_rerank_stream(
    cases: list[S.Case], rpcs: dict[str, Rpc], model: Model, outcomes: Outcomes
) -> None:
    fuzz_stream(rpcs["Rerank"], cases, model, outcomes)


# Every method of every service, by its path, and the RPC whose good call follows.
METHODS = {
    "/headserve.v1.Encoder/Encode": "Encode",
    "/headserve.v1.Encoder/EncodeStream": "Encode",
    "/headserve.v1.TokenPredictor/PredictTokens": "PredictTokens",
    "/headserve.v1.TokenPredictor/PredictTokensStream": "PredictTokens",
    "/headserve.v1.Classifier/Classify": "Classify",
    "/headserve.v1.Classifier/ClassifyStream": "Classify",
    "/headserve.v1.QuestionAnswerer/AnswerQuestion": "AnswerQuestion",
    "/headserve.v1.QuestionAnswerer/AnswerQuestionStream": "AnswerQuestion",
    "/headserve.v1.Heads/Run": "Run",
    "/headserve.v1.Heads/RunStream": "Run",
    "/headserve.v1.Heads/RunHeads": "RunHeads",
    "/headserve.v1.Heads/RunHeadsStream": "RunHeads",
    "/headserve.v1.Models/GetModelInfo": "Tokenize",
    "/headserve.v1.Models/Tokenize": "Tokenize",
    "/headserve.v1.Ranker/Rerank": "Rerank",
    "/headserve.v1.Ranker/RerankStream": "Rerank",
    # admin calls without an admin token: refused before their bytes matter
    "/headserve.v1.HeadAdmin/LoadHead": "Tokenize",
    "/headserve.v1.HeadAdmin/UnloadHead": "Tokenize",
    "/headserve.v1.HeadAdmin/SetDefaultHead": "Tokenize",
    "/headserve.v1.HeadAdmin/PromoteHead": "Tokenize",
    # batch jobs: unknown ids, uploads that are no job's input (one message, or none)
    **{
        f"/headserve.v1.Jobs/{m.name}": "Tokenize"
        for m in jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].methods
    },
}


def test_methods_are_all_covered() -> None:
    files = (
        encoder_pb2,
        token_predictor_pb2,
        classifier_pb2,
        question_answerer_pb2,
        heads_pb2,
        models_pb2,
        ranker_pb2,
        admin_pb2,
        jobs_pb2,
    )
    paths = {
        f"/{service.full_name}/{method.name}"
        for module in files
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert paths == set(METHODS)
    assert {path.split("/")[1] for path in paths} == {*services(TASKS), "headserve.v1.Jobs"}


@given(path=st.sampled_from(sorted(METHODS)), body=S.raw_bodies())
def test_raw_bytes(
    path: str,
    body: bytes,
    channel: grpc.Channel,
    rpcs: dict[str, Rpc],
    model: Model,
    outcomes: Outcomes,
) -> None:
    call = channel.unary_unary(path)  # no serializers: bytes in, bytes out
    try:
        call(body, timeout=TIMEOUT)
    except grpc.RpcError as error:
        # bytes that are not the message are the caller's fault: never UNKNOWN or INTERNAL
        assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
            error.code(),
            error.details(),
        )
        outcomes.call("raw bytes", error.code().name)
    else:
        outcomes.call("raw bytes", "OK")  # the bytes happened to parse
    still_serving(rpcs[METHODS[path]], model)
