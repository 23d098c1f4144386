"""Client and AsyncClient against an in-process gRPC server with small fake servicers.

The fakes answer from their input (so order and option mapping can be checked) and switch
behaviour on magic texts, so one server serves every test:

- ``""`` at index i: INVALID_ARGUMENT with ``BadRequest(items[i].text)`` and ``ErrorInfo``;
- ``"flaky:KEY:N"``: UNAVAILABLE for the first N calls carrying KEY, then an answer;
- ``"sleep:S"``: answer after S seconds (or when the caller gives up).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent import futures

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from headserve.client import (
    AsyncClient,
    Batch,
    ClassifyResult,
    Client,
    DeadlineExceededError,
    EncodeResult,
    HeadOutput,
    InvalidArgumentError,
    NotFoundError,
    QuestionContext,
    RunResult,
    Span,
    StreamResult,
    UnavailableError,
)
from headserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    heads_pb2,
    heads_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    question_answerer_pb2,
    question_answerer_pb2_grpc,
    token_predictor_pb2,
    token_predictor_pb2_grpc,
)

MASK = "[MASK]"
USAGE_TIMING = {"timing": common_pb2.Timing(queue_ms=1.5, inference_ms=2.5)}


# --- the fake server ----------------------------------------------------------------------------


class Refused(Exception):
    """A fake's way to fail a request with a rich status."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class Behaviour:
    """The magic-text behaviours, shared by every fake servicer."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def check(self, texts: list[str], context: grpc.ServicerContext) -> None:
        for index, text in enumerate(texts):
            if text == "":
                raise Refused(
                    status_pb2.Status(
                        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                        message=f"items[{index}].text is empty",
                        details=[
                            _pack(
                                error_details_pb2.BadRequest(
                                    field_violations=[
                                        error_details_pb2.BadRequest.FieldViolation(
                                            field=f"items[{index}].text",
                                            description="must not be empty",
                                        )
                                    ]
                                )
                            ),
                            _pack(
                                error_details_pb2.ErrorInfo(
                                    reason="EMPTY_TEXT",
                                    domain="headserve",
                                    metadata={"item": str(index)},
                                )
                            ),
                        ],
                    )
                )
            if text.startswith("flaky:"):
                _, key, failures = text.split(":")
                with self._lock:
                    self.calls[key] += 1
                    seen = self.calls[key]
                if seen <= int(failures):
                    raise Refused(
                        status_pb2.Status(
                            code=grpc.StatusCode.UNAVAILABLE.value[0], message="warming up"
                        )
                    )
            if text.startswith("sleep:"):
                until = time.monotonic() + float(text.split(":")[1])
                while time.monotonic() < until and context.is_active():
                    time.sleep(0.01)


def unary(behaviour: Behaviour, texts, answer, request, context):
    try:
        behaviour.check(texts(request), context)
        return answer(request)
    except Refused as refused:
        context.abort_with_status(rpc_status.to_status(refused.status))


def stream(behaviour: Behaviour, texts, answer, response_type, requests, context):
    for request in requests:
        try:
            behaviour.check(texts(request), context)
            yield response_type(id=request.id, response=answer(request))
        except Refused as refused:
            yield response_type(id=request.id, error=refused.status)


def _texts(request) -> list[str]:
    return [item.text for item in request.items]


def _words(text: str) -> list[tuple[str, int, int]]:
    """Whitespace words with their code-point spans."""
    words, start = [], None
    for i, ch in enumerate(text + " "):
        if ch.isspace() and start is not None:
            words.append((text[start:i], start, i))
            start = None
        elif not ch.isspace() and start is None:
            start = i
    return words


def _bf16_bytes(values: np.ndarray) -> bytes:
    return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()


class FakeEncoder(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    @staticmethod
    def answer(request: encoder_pb2.EncodeRequest) -> encoder_pb2.EncodeResponse:
        o = request.options
        normalize = float(o.normalize) if o.HasField("normalize") else -1.0
        results = []
        for index, item in enumerate(request.items):
            pair = float(len(item.text_pair)) if item.HasField("text_pair") else -1.0
            if o.pooling == encoder_pb2.POOLING_NONE:
                words = [w for w, _, _ in _words(item.text)]
                states = np.array([[len(w), i] for i, w in enumerate(words)], dtype="<f4")
                results.append(
                    encoder_pb2.Embedding(
                        token_states=common_pb2.Tensor(
                            shape=list(states.shape),
                            dtype=common_pb2.DTYPE_FLOAT32,
                            data=states.tobytes(),
                        ),
                        tokens=words,
                    )
                )
            else:
                vector = [len(item.text), pair, index, o.pooling, normalize, float(o.truncate)]
                results.append(encoder_pb2.Embedding(vector=vector))
        tokens = sum(len(_words(i.text)) for i in request.items)
        return encoder_pb2.EncodeResponse(
            results=results, usage=common_pb2.Usage(input_tokens=tokens), **USAGE_TIMING
        )

    def Encode(self, request, context):
        return unary(self.behaviour, _texts, self.answer, request, context)

    def EncodeStream(self, request_iterator, context):
        yield from stream(
            self.behaviour,
            _texts,
            self.answer,
            encoder_pb2.EncodeStreamResponse,
            request_iterator,
            context,
        )


class FakeTokenPredictor(token_predictor_pb2_grpc.TokenPredictorServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    @staticmethod
    def answer(request):
        top_k = request.options.top_k or 5
        results = []
        for item in request.items:
            words = _words(item.text)
            masks = [
                token_predictor_pb2.MaskPrediction(
                    position=position + 1,  # after [CLS]
                    span=common_pb2.Span(start=start, end=end),
                    candidates=[
                        token_predictor_pb2.TokenCandidate(
                            token_id=100 + k, token=f"tok{k}", probability=1.0 / (k + 2)
                        )
                        for k in range(top_k)
                    ],
                )
                for position, (word, start, end) in enumerate(words)
                if word == MASK
            ]
            prediction = token_predictor_pb2.TokenPrediction(masks=masks)
            if request.options.return_logits:
                logits = np.array(
                    [[i, -i, 0.5] for i in range(len(words))], dtype=np.float32
                ).reshape(len(words), 3)
                prediction.logits.CopyFrom(
                    common_pb2.Tensor(
                        shape=[len(words), 3],
                        dtype=common_pb2.DTYPE_BFLOAT16,
                        data=_bf16_bytes(logits),
                    )
                )
            results.append(prediction)
        return token_predictor_pb2.PredictTokensResponse(results=results, **USAGE_TIMING)

    def PredictTokens(self, request, context):
        return unary(self.behaviour, _texts, self.answer, request, context)

    def PredictTokensStream(self, request_iterator, context):
        yield from stream(
            self.behaviour,
            _texts,
            self.answer,
            token_predictor_pb2.PredictTokensStreamResponse,
            request_iterator,
            context,
        )


class FakeClassifier(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    @staticmethod
    def answer(request):
        heads = list(request.options.heads) or ["default"]
        if "missing" in heads:
            raise Refused(
                status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="no head")
            )
        results = []
        for item in request.items:
            positive = 0.75 if "good" in item.text else 0.25
            scores = sorted(
                [("pos", positive), ("neg", 1 - positive)], key=lambda s: s[1], reverse=True
            )
            if request.options.top_k:
                scores = scores[: request.options.top_k]
            results.append(
                classifier_pb2.Classification(
                    heads=[
                        classifier_pb2.HeadClassification(
                            head=head,
                            multi_label=head.startswith("multi"),
                            labels=[
                                classifier_pb2.LabelScore(label=label, probability=p)
                                for label, p in scores
                            ],
                        )
                        for head in heads
                    ]
                )
            )
        return classifier_pb2.ClassifyResponse(results=results, **USAGE_TIMING)

    def Classify(self, request, context):
        return unary(self.behaviour, _texts, self.answer, request, context)

    def ClassifyStream(self, request_iterator, context):
        yield from stream(
            self.behaviour,
            _texts,
            self.answer,
            classifier_pb2.ClassifyStreamResponse,
            request_iterator,
            context,
        )


class FakeQuestionAnswerer(question_answerer_pb2_grpc.QuestionAnswererServicer):
    """Answers with the context word equal to the question's last word."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    @staticmethod
    def answer(request):
        results = []
        for item in request.items:
            wanted = item.question.rstrip("?").split()[-1]
            found = [(w, s, e) for w, s, e in _words(item.context) if w.strip(".,") == wanted]
            answers = [
                question_answerer_pb2.Answer(text=w, score=0.9, start=s, end=e) for w, s, e in found
            ]
            if not answers and request.options.allow_no_answer:
                answers = [question_answerer_pb2.Answer(score=0.5, no_answer=True)]
            results.append(
                question_answerer_pb2.QuestionAnswer(
                    answers=answers[: request.options.top_k or 1], windows=1
                )
            )
        return question_answerer_pb2.AnswerQuestionResponse(results=results, **USAGE_TIMING)

    def AnswerQuestion(self, request, context):
        return unary(self.behaviour, _questions, self.answer, request, context)

    def AnswerQuestionStream(self, request_iterator, context):
        yield from stream(
            self.behaviour,
            _questions,
            self.answer,
            question_answerer_pb2.AnswerQuestionStreamResponse,
            request_iterator,
            context,
        )


class FakeHeads(heads_pb2_grpc.HeadsServicer):
    """Echoes what it was sent: head, options and truncate in every output's fields."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    @staticmethod
    def answer(request: heads_pb2.RunRequest) -> heads_pb2.RunResponse:
        if request.head == "missing":
            raise Refused(
                status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="no head")
            )
        results = []
        for index, item in enumerate(request.items):
            words = _words(item.text)
            fields = struct_pb2.Struct()
            fields.update(
                {
                    "index": index,
                    "pair": item.text_pair if item.HasField("text_pair") else None,
                    "words": [{"word": w, "span": {"start": s, "end": e}} for w, s, e in words],
                    "sent": {
                        "options": json_format.MessageToDict(request.options),
                        "has_options": request.HasField("options"),
                        "truncate": request.truncate,
                    },
                }
            )
            lengths = np.array([len(w) + 0.25 for w, _, _ in words], dtype="<f4")
            results.append(
                heads_pb2.HeadOutput(
                    fields=fields,
                    tensors={
                        "lengths": common_pb2.Tensor(
                            shape=[len(words)],
                            dtype=common_pb2.DTYPE_FLOAT32,
                            data=lengths.tobytes(),
                        )
                    },
                )
            )
        return heads_pb2.RunResponse(
            head=request.head,
            task="fake_task",
            results=results,
            usage=common_pb2.Usage(input_tokens=len(request.items)),
            **USAGE_TIMING,
        )

    def Run(self, request, context):
        return unary(self.behaviour, _texts, self.answer, request, context)

    def RunStream(self, request_iterator, context):
        yield from stream(
            self.behaviour,
            _texts,
            self.answer,
            heads_pb2.RunStreamResponse,
            request_iterator,
            context,
        )


def _questions(request) -> list[str]:
    return [item.question for item in request.items]


class FakeModels(models_pb2_grpc.ModelsServicer):
    def GetModelInfo(self, request, context):
        return models_pb2.ModelInfo(
            backbone=models_pb2.BackboneInfo(
                model_type="bert", hidden_size=8, max_length=32, mask_token=MASK
            ),
            heads=[
                models_pb2.HeadInfo(name="encode", task="encode", usable=True, is_default=True),
                models_pb2.HeadInfo(
                    name="sentiment",
                    task="classify",
                    labels=["neg", "pos"],
                    usable=False,
                    detail="untrained",
                ),
                models_pb2.HeadInfo(
                    name="tagger",
                    task="fake_task",
                    usable=True,
                    outputs=[
                        models_pb2.OutputField(
                            name="words", kind=models_pb2.OutputField.KIND_VALUE, type="list"
                        ),
                        models_pb2.OutputField(
                            name="lengths",
                            kind=models_pb2.OutputField.KIND_TENSOR,
                            type="float32",
                            shape="[words]",
                        ),
                    ],
                    parameters=[
                        models_pb2.ParameterInfo(
                            name="mode", type="string", default='"fast"', choices=["fast", "slow"]
                        ),
                        models_pb2.ParameterInfo(name="top_k", type="integer", default="2"),
                    ],
                ),
            ],
            failed_plugins=[models_pb2.PluginFailure(plugin="broken[x]", reason="ImportError")],
            server_version="0.0-fake",
        )

    def Tokenize(self, request, context):
        special = not request.HasField("add_special_tokens") or request.add_special_tokens
        results = []
        for item in request.items:
            words = _words(item.text)
            tokens = [w for w, _, _ in words]
            offsets = [common_pb2.Span(start=s, end=e) for _, s, e in words]
            sequence_ids = [0] * len(words)
            if special:
                tokens = ["[CLS]", *tokens, "[SEP]"]
                offsets = [common_pb2.Span(), *offsets, common_pb2.Span()]
                sequence_ids = [-1, *sequence_ids, -1]
            results.append(
                models_pb2.Tokenization(
                    ids=list(range(len(tokens))),
                    tokens=tokens,
                    offsets=offsets,
                    token_type_ids=[0] * len(tokens),
                    sequence_ids=sequence_ids,
                )
            )
        return models_pb2.TokenizeResponse(results=results)


class FakeServer:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        encoder_pb2_grpc.add_EncoderServicer_to_server(FakeEncoder(self.behaviour), self.server)
        token_predictor_pb2_grpc.add_TokenPredictorServicer_to_server(
            FakeTokenPredictor(self.behaviour), self.server
        )
        classifier_pb2_grpc.add_ClassifierServicer_to_server(
            FakeClassifier(self.behaviour), self.server
        )
        question_answerer_pb2_grpc.add_QuestionAnswererServicer_to_server(
            FakeQuestionAnswerer(self.behaviour), self.server
        )
        models_pb2_grpc.add_ModelsServicer_to_server(FakeModels(), self.server)
        heads_pb2_grpc.add_HeadsServicer_to_server(FakeHeads(self.behaviour), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def calls(self, key: str) -> int:
        return self.behaviour.calls[key]


@pytest.fixture(scope="module")
def fake() -> FakeServer:
    server = FakeServer()
    server.server.start()
    yield server
    server.server.stop(grace=None)


def flaky(failures: int) -> tuple[str, str]:
    key = uuid.uuid4().hex
    return key, f"flaky:{key}:{failures}"


# --- shared expectations ------------------------------------------------------------------------
# Each case is checked the same way for both clients; only how the call is made differs.


def check_encode(result: EncodeResult) -> None:
    assert isinstance(result, EncodeResult)
    assert len(result) == 3 and result[1] is result.embeddings[1]
    vectors = result.vectors
    assert vectors.dtype == np.float32 and vectors.shape == (3, 6)
    # [len(text), len(pair) or -1, index, pooling enum, normalize or -1, truncate]
    np.testing.assert_array_equal(
        vectors,
        [
            [3, -1, 0, encoder_pb2.POOLING_MEAN, 0, 1],
            [5, 6, 1, encoder_pb2.POOLING_MEAN, 0, 1],
            [2, -1, 2, encoder_pb2.POOLING_MEAN, 0, 1],
        ],
    )
    assert result.usage.input_tokens == 3
    assert (result.timing.queue_ms, result.timing.inference_ms) == (1.5, 2.5)


ENCODE_ITEMS = ["one", ("first", "second"), "zz"]
ENCODE_OPTIONS = {"pooling": "mean", "normalize": False, "truncate": True}


def check_token_states(result: EncodeResult) -> None:
    embedding = result[0]
    assert embedding.vector is None
    assert embedding.tokens == ("hello", "big", "world")
    assert embedding.token_states is not None
    np.testing.assert_array_equal(embedding.token_states, [[5, 0], [3, 1], [5, 2]])


PREDICT_TEXT = "é [MASK] café [MASK]"


def check_predict_tokens(result) -> None:
    masks = result.predictions[0].masks
    assert [m.position for m in masks] == [2, 4]
    assert [PREDICT_TEXT[slice(*m.span)] for m in masks] == [MASK, MASK]
    assert masks[1].span == Span(14, 20)  # code points, not UTF-8 bytes
    assert [c.token_id for c in masks[0].candidates] == [100, 101]
    logits = result[0].logits
    assert logits is not None and logits.dtype == np.float32 and logits.shape == (4, 3)
    np.testing.assert_array_equal(logits[3], [3.0, -3.0, 0.5])  # exact in bfloat16


def check_classify(result: ClassifyResult) -> None:
    assert isinstance(result, ClassifyResult)
    assert [c.heads[0].top.label for c in result.classifications] == ["pos", "neg"]
    assert [h.head for h in result[0].heads] == ["topic", "multi-tags"]  # order asked
    assert result[0].head("multi-tags").multi_label
    assert len(result[1].heads[0].labels) == 1  # top_k=1
    assert result[1].heads[0].labels[0].probability == pytest.approx(0.75)


QA_ITEMS = [("Who wrote it?", "Ada wrote it."), QuestionContext("Where is Paris?", "In France.")]


def check_answer_question(result) -> None:
    first, second = result.answers
    assert first.best.text == "it." and "Ada wrote it."[slice(*first.best.span)] == "it."
    assert second.best.no_answer and second.best.text == ""
    assert first.windows == 1


def check_model_info_and_tokenize(info, tokenized) -> None:
    assert info.backbone.mask_token == MASK
    assert info.default_head("encode").name == "encode"
    assert not info.head("sentiment").usable and info.head("sentiment").labels == ("neg", "pos")
    assert info.failed_plugins[0].plugin == "broken[x]"
    tagger = info.head("tagger")
    assert [(o.name, o.kind, o.shape) for o in tagger.outputs] == [
        ("words", "value", ""),
        ("lengths", "tensor", "[words]"),
    ]
    assert [(p.name, p.default, p.choices) for p in tagger.parameters] == [
        ("mode", "fast", ("fast", "slow")),
        ("top_k", 2, ()),
    ]
    assert info.head("encode").outputs == () and info.head("encode").parameters == ()
    with_special, without = tokenized
    assert with_special.tokens == ("[CLS]", "naïve", "text", "[SEP]")
    assert with_special.offsets[0] == (0, 0) and with_special.offsets[2] == Span(6, 10)
    assert with_special.sequence_ids == (-1, 0, 0, -1)
    assert without.tokens == ("x",)


def check_invalid_argument(error: InvalidArgumentError) -> None:
    assert error.item == 1
    assert error.field == "items[1].text"
    assert error.reason == "EMPTY_TEXT"
    assert error.metadata["item"] == "1"
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT


STREAM_BATCHES = [
    Batch(["a"], id="first"),
    Batch(["fine", "", "never"], id="broken"),
    Batch(["abc", ("d", "ef")], id="last"),
]


def check_stream(results: list[StreamResult[EncodeResult]]) -> None:
    assert [r.id for r in results] == ["first", "broken", "last"]
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, InvalidArgumentError) and results[1].error.item == 1
    with pytest.raises(InvalidArgumentError):
        results[1].unwrap()
    np.testing.assert_array_equal(results[0].unwrap().vectors[:, 0], [1])
    np.testing.assert_array_equal(results[2].unwrap().vectors[:, :2], [[3, -1], [1, 2]])


RUN_ITEMS = ["Ada wrote it", ("naïve café", "pair")]
RUN_OPTIONS = {"mode": "slow", "top_k": 3, "labels": ["PER", "LOC"], "nested": {"on": True}}


def check_run(result: RunResult) -> None:
    assert isinstance(result, RunResult)
    assert (result.head, result.task, len(result)) == ("tagger", "fake_task", 2)
    first, second = result
    assert isinstance(first, HeadOutput) and result[1] is result.outputs[1]
    # head, options and truncate arrived as sent (numbers as doubles: 3 -> 3.0)
    assert first["sent"] == {
        "options": {"mode": "slow", "top_k": 3.0, "labels": ["PER", "LOC"], "nested": {"on": True}},
        "has_options": True,
        "truncate": True,
    }
    assert (first["index"], first["pair"], second["index"], second["pair"]) == (
        0.0,
        None,
        1.0,
        "pair",
    )
    assert [w["word"] for w in second["words"]] == ["naïve", "café"]
    assert second["words"][1]["span"] == {"start": 6.0, "end": 10.0}  # code points
    lengths = second.tensors["lengths"]
    assert lengths.dtype == np.float32 and lengths.shape == (2,)
    np.testing.assert_array_equal(lengths, np.array([5.25, 4.25], dtype=np.float32))
    np.testing.assert_array_equal(first["lengths"], [3.25, 5.25, 2.25])
    assert result.usage.input_tokens == 2
    assert (result.timing.queue_ms, result.timing.inference_ms) == (1.5, 2.5)


RUN_BATCHES = [
    Batch(["a b"], id="first"),
    Batch(["fine", ""], id="broken"),
    Batch([("x", "y"), "c"], id="last"),
]


def check_run_stream(results: list[StreamResult[RunResult]]) -> None:
    assert [r.id for r in results] == ["first", "broken", "last"]
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, InvalidArgumentError) and results[1].error.item == 1
    with pytest.raises(InvalidArgumentError):
        results[1].unwrap()
    first, last = results[0].unwrap(), results[2].unwrap()
    assert first.head == last.head == "tagger"
    for result in (first, last):  # every batch carries the stream's head, options and truncate
        assert result[0]["sent"] == {
            "options": {"top_k": 1.0},
            "has_options": True,
            "truncate": True,
        }
    assert [w["word"] for w in first[0]["words"]] == ["a", "b"]
    assert (last[0]["pair"], len(last)) == ("y", 2)
    np.testing.assert_array_equal(last[1]["lengths"], [1.25])


# --- the sync client ----------------------------------------------------------------------------


class TestClient:
    def test_encode_results_typed_and_in_order(self, fake):
        with Client(fake.target) as client:
            check_encode(client.encode(ENCODE_ITEMS, **ENCODE_OPTIONS))

    def test_encode_without_pooling_returns_token_states(self, fake):
        with Client(fake.target) as client:
            check_token_states(client.encode(["hello big world"], pooling="none"))

    def test_predict_tokens(self, fake):
        with Client(fake.target) as client:
            check_predict_tokens(client.predict_tokens([PREDICT_TEXT], top_k=2, return_logits=True))

    def test_classify(self, fake):
        with Client(fake.target) as client:
            check_classify(
                client.classify(["good day", "bad day"], heads=["topic", "multi-tags"], top_k=1)
            )

    def test_answer_question(self, fake):
        with Client(fake.target) as client:
            check_answer_question(client.answer_question(QA_ITEMS, allow_no_answer=True))

    def test_model_info_and_tokenize(self, fake):
        with Client(fake.target) as client:
            info = client.model_info()
            tokenized = client.tokenize(["naïve text"]) + client.tokenize(
                ["x"], add_special_tokens=False
            )
            check_model_info_and_tokenize(info, tokenized)

    def test_invalid_argument_names_the_item(self, fake):
        with Client(fake.target) as client, pytest.raises(InvalidArgumentError) as caught:
            client.encode(["ok", "", "ok"])
        check_invalid_argument(caught.value)

    def test_unknown_head_is_not_found(self, fake):
        with Client(fake.target) as client, pytest.raises(NotFoundError):
            client.classify(["x"], heads="missing")

    def test_stream_error_for_one_batch_leaves_the_others(self, fake):
        with Client(fake.target) as client:
            check_stream(list(client.encode_stream(iter(STREAM_BATCHES))))

    def test_stream_of_other_methods(self, fake):
        with Client(fake.target) as client:
            classified = list(client.classify_stream([Batch(["good"], id="c")], top_k=1))
            answered = list(client.answer_question_stream([Batch(QA_ITEMS, id="q")]))
            predicted = list(client.predict_tokens_stream([Batch([MASK], id="p")], top_k=1))
        assert classified[0].unwrap()[0].heads[0].top.label == "pos"
        assert answered[0].unwrap()[0].best.text == "it."
        assert len(predicted[0].unwrap()[0].masks[0].candidates) == 1

    def test_run(self, fake):
        with Client(fake.target) as client:
            check_run(client.run("tagger", RUN_ITEMS, options=RUN_OPTIONS, truncate=True))
            plain = client.run("tagger", ["x"])
        assert plain[0]["sent"] == {"options": {}, "has_options": False, "truncate": False}

    def test_run_unknown_head_and_bad_item(self, fake):
        with Client(fake.target) as client:
            with pytest.raises(NotFoundError):
                client.run("missing", ["x"])
            with pytest.raises(InvalidArgumentError) as caught:
                client.run("tagger", ["ok", "", "ok"])
        check_invalid_argument(caught.value)

    def test_run_retries_unavailable(self, fake):
        key, text = flaky(1)
        with Client(fake.target, max_retries=1) as client:
            assert len(client.run("tagger", [text])) == 1
        assert fake.calls(key) == 2

    def test_run_stream_error_for_one_batch_leaves_the_others(self, fake):
        with Client(fake.target) as client:
            results = list(
                client.run_stream(
                    iter(RUN_BATCHES), head="tagger", options={"top_k": 1}, truncate=True
                )
            )
        check_run_stream(results)

    def test_stream_input_failure_reaches_the_caller(self, fake):
        def batches():
            yield Batch(["a"], id="1")
            raise LookupError("source broke")

        with Client(fake.target) as client:
            seen = []
            with pytest.raises(LookupError, match="source broke"):
                for outcome in client.encode_stream(batches()):
                    seen.append(outcome.id)
        assert seen == ["1"]

    def test_retries_unavailable_within_max_retries(self, fake):
        key, text = flaky(2)
        with Client(fake.target, max_retries=2) as client:
            result = client.encode([text])
        assert len(result) == 1
        assert fake.calls(key) == 3

    def test_gives_up_after_max_retries(self, fake):
        key, text = flaky(2)
        with Client(fake.target, max_retries=1) as client, pytest.raises(UnavailableError):
            client.encode([text])
        assert fake.calls(key) == 2

    def test_streams_are_not_retried(self, fake):
        key, text = flaky(1)
        with Client(fake.target, max_retries=3) as client:
            (outcome,) = client.encode_stream([Batch([text], id="s")])
        assert isinstance(outcome.error, UnavailableError)
        assert fake.calls(key) == 1

    def test_timeout_raises_deadline_exceeded(self, fake):
        with Client(fake.target, timeout=0.2) as client:
            with pytest.raises(DeadlineExceededError) as caught:
                client.encode(["sleep:5"])
            assert isinstance(caught.value, TimeoutError)
            with pytest.raises(DeadlineExceededError):
                client.with_options(timeout=30.0).encode(["sleep:5"], timeout=0.2)
            assert len(client.with_options(timeout=None).encode(["sleep:0.3"])) == 1

    def test_with_options_returns_a_copy(self, fake):
        with Client(fake.target, timeout=7.0, max_retries=3) as client:
            quick = client.with_options(timeout=1.0, max_retries=0)
            assert (client.timeout, client.max_retries) == (7.0, 3)
            assert (quick.timeout, quick.max_retries) == (1.0, 0)
            assert quick is not client
            key, text = flaky(1)
            with pytest.raises(UnavailableError):
                quick.encode([text])  # no retries on the copy...
            assert len(client.encode([text])) == 1  # ...the original still retries
            assert fake.calls(key) == 2

    def test_caller_channel_and_metadata(self, fake):
        channel = grpc.insecure_channel(fake.target)
        client = Client(channel=channel, metadata=[("x-request-id", "abc")])
        assert client.metadata == (("x-request-id", "abc"),)
        assert len(client.encode(["via my channel"])) == 1
        client.close()
        with pytest.raises(ValueError, match="options"):
            Client(channel=channel, options=[("grpc.enable_retries", 0)])


# --- the async client ---------------------------------------------------------------------------


class TestAsyncClient:
    def test_encode_results_typed_and_in_order(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                check_encode(await client.encode(ENCODE_ITEMS, **ENCODE_OPTIONS))

        asyncio.run(main())

    def test_encode_without_pooling_returns_token_states(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                check_token_states(await client.encode(["hello big world"], pooling="none"))

        asyncio.run(main())

    def test_predict_tokens(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                check_predict_tokens(
                    await client.predict_tokens([PREDICT_TEXT], top_k=2, return_logits=True)
                )

        asyncio.run(main())

    def test_classify(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                check_classify(
                    await client.classify(
                        ["good day", "bad day"], heads=["topic", "multi-tags"], top_k=1
                    )
                )

        asyncio.run(main())

    def test_answer_question(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                check_answer_question(await client.answer_question(QA_ITEMS, allow_no_answer=True))

        asyncio.run(main())

    def test_model_info_and_tokenize(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                info = await client.model_info()
                tokenized = await client.tokenize(["naïve text"]) + await client.tokenize(
                    ["x"], add_special_tokens=False
                )
                check_model_info_and_tokenize(info, tokenized)

        asyncio.run(main())

    def test_invalid_argument_names_the_item(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                with pytest.raises(InvalidArgumentError) as caught:
                    await client.encode(["ok", "", "ok"])
                check_invalid_argument(caught.value)

        asyncio.run(main())

    def test_unknown_head_is_not_found(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                with pytest.raises(NotFoundError):
                    await client.classify(["x"], heads="missing")

        asyncio.run(main())

    def test_stream_error_for_one_batch_leaves_the_others(self, fake):
        async def batches():
            for batch in STREAM_BATCHES:
                await asyncio.sleep(0)
                yield batch

        async def main():
            async with AsyncClient(fake.target) as client:
                from_async = [r async for r in client.encode_stream(batches())]
                from_sync = [r async for r in client.encode_stream(STREAM_BATCHES)]
            check_stream(from_async)
            check_stream(from_sync)

        asyncio.run(main())

    def test_stream_of_other_methods(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                classified = [r async for r in client.classify_stream([Batch(["good"], id="c")])]
                answered = [
                    r async for r in client.answer_question_stream([Batch(QA_ITEMS, id="q")])
                ]
                predicted = [
                    r async for r in client.predict_tokens_stream([Batch([MASK], id="p")], top_k=1)
                ]
            assert classified[0].unwrap()[0].heads[0].top.label == "pos"
            assert answered[0].unwrap()[0].best.text == "it."
            assert len(predicted[0].unwrap()[0].masks[0].candidates) == 1

        asyncio.run(main())

    def test_run(self, fake):
        async def main():
            async with AsyncClient(fake.target) as client:
                check_run(await client.run("tagger", RUN_ITEMS, options=RUN_OPTIONS, truncate=True))
                with pytest.raises(NotFoundError):
                    await client.run("missing", ["x"])
                with pytest.raises(InvalidArgumentError) as caught:
                    await client.run("tagger", ["ok", "", "ok"])
                check_invalid_argument(caught.value)

        asyncio.run(main())

    def test_run_stream_error_for_one_batch_leaves_the_others(self, fake):
        async def batches():
            for batch in RUN_BATCHES:
                await asyncio.sleep(0)
                yield batch

        async def main():
            async with AsyncClient(fake.target) as client:
                options = {"top_k": 1}
                from_async = [
                    r
                    async for r in client.run_stream(
                        batches(), head="tagger", options=options, truncate=True
                    )
                ]
                from_sync = [
                    r
                    async for r in client.run_stream(
                        RUN_BATCHES, head="tagger", options=options, truncate=True
                    )
                ]
            check_run_stream(from_async)
            check_run_stream(from_sync)

        asyncio.run(main())

    def test_stream_input_failure_reaches_the_caller(self, fake):
        async def batches():
            yield Batch(["a"], id="1")
            raise LookupError("source broke")

        async def main():
            seen = []
            async with AsyncClient(fake.target) as client:
                with pytest.raises(LookupError, match="source broke"):
                    async for outcome in client.encode_stream(batches()):
                        seen.append(outcome.id)
            assert seen == ["1"]

        asyncio.run(main())

    def test_retries_unavailable_within_max_retries(self, fake):
        key, text = flaky(2)

        async def main():
            async with AsyncClient(fake.target, max_retries=2) as client:
                return await client.encode([text])

        assert len(asyncio.run(main())) == 1
        assert fake.calls(key) == 3

    def test_gives_up_after_max_retries(self, fake):
        key, text = flaky(2)

        async def main():
            async with AsyncClient(fake.target, max_retries=1) as client:
                with pytest.raises(UnavailableError):
                    await client.encode([text])

        asyncio.run(main())
        assert fake.calls(key) == 2

    def test_streams_are_not_retried(self, fake):
        key, text = flaky(1)

        async def main():
            async with AsyncClient(fake.target, max_retries=3) as client:
                return [r async for r in client.encode_stream([Batch([text], id="s")])]

        (outcome,) = asyncio.run(main())
        assert isinstance(outcome.error, UnavailableError)
        assert fake.calls(key) == 1

    def test_timeout_raises_deadline_exceeded(self, fake):
        async def main():
            async with AsyncClient(fake.target, timeout=0.2) as client:
                with pytest.raises(DeadlineExceededError) as caught:
                    await client.encode(["sleep:5"])
                assert isinstance(caught.value, TimeoutError)
                with pytest.raises(DeadlineExceededError):
                    await client.with_options(timeout=30.0).encode(["sleep:5"], timeout=0.2)
                assert len(await client.with_options(timeout=None).encode(["sleep:0.3"])) == 1

        asyncio.run(main())

    def test_with_options_returns_a_copy(self, fake):
        key, text = flaky(1)

        async def main():
            async with AsyncClient(fake.target, timeout=7.0, max_retries=3) as client:
                quick = client.with_options(timeout=1.0, max_retries=0)
                assert (client.timeout, client.max_retries) == (7.0, 3)
                assert (quick.timeout, quick.max_retries) == (1.0, 0)
                with pytest.raises(UnavailableError):
                    await quick.encode([text])
                assert len(await client.encode([text])) == 1

        asyncio.run(main())
        assert fake.calls(key) == 2

    def test_client_built_outside_the_loop(self, fake):
        client = AsyncClient(fake.target)  # no running loop yet: the channel waits for one

        async def main():
            async with client:
                return await client.encode(["late binding"])

        assert len(asyncio.run(main())) == 1


# --- packaging ----------------------------------------------------------------------------------


def test_importing_the_client_leaves_torch_and_transformers_out():
    code = (
        "import sys, headserve.client\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(heavy)\n"
        "assert headserve.client.Client and headserve.client.AsyncClient\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
