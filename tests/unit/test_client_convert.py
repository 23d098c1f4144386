"""The client's pure parts: tensor decoding, request building, response and error mapping."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2, wrappers_pb2
from google.rpc import error_details_pb2, status_pb2

from headserve.client import (
    NOT_GIVEN,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    HeadOutput,
    HeadserveError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutputField,
    ParameterInfo,
    PermissionDeniedError,
    QuestionContext,
    ResourceExhaustedError,
    RunResult,
    Span,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    _convert,
    _retry,
    errors,
)
from headserve.client._options import Settings
from headserve.client._tensor import decode_tensor
from headserve.v1 import common_pb2, encoder_pb2, heads_pb2, models_pb2, token_predictor_pb2

# --- tensors ------------------------------------------------------------------------------------


def tensor(shape: tuple[int, ...], dtype: int, data: bytes) -> common_pb2.Tensor:
    return common_pb2.Tensor(shape=list(shape), dtype=dtype, data=data)


@pytest.mark.parametrize(
    ("dtype", "fmt", "numpy_dtype", "values"),
    [
        (common_pb2.DTYPE_FLOAT32, "<6f", np.float32, [0.5, -1.25, 3.0, 1e-3, -7.0, 65504.0]),
        (
            common_pb2.DTYPE_FLOAT16,
            "<6e",
            np.float16,
            [0.5, -1.25, 3.0, 0.099975586, -7.0, 65504.0],
        ),
        (common_pb2.DTYPE_INT64, "<6q", np.int64, [0, -1, 2**40, -(2**62), 7, 9]),
        (common_pb2.DTYPE_INT32, "<6i", np.int32, [0, -1, 2**30, -(2**31), 7, 9]),
    ],
)
def test_tensor_decodes_little_endian_row_major(dtype, fmt, numpy_dtype, values):
    # Bytes packed by struct, not by numpy: an independent statement of the wire format.
    array = decode_tensor(tensor((2, 3), dtype, struct.pack(fmt, *values)))

    assert array.dtype == np.dtype(numpy_dtype)
    assert array.shape == (2, 3)
    np.testing.assert_array_equal(array, np.array(values, dtype=numpy_dtype).reshape(2, 3))
    assert array[1, 0] == np.array(values[3], dtype=numpy_dtype)  # row-major: row 1 starts at 3


def test_bfloat16_becomes_float32_from_the_high_half():
    # bfloat16 is the top 16 bits of a float32: 0x3F80 is 1.0, 0xC020 is -2.5, 0x4049 is 3.140625.
    bits = [0x3F80, 0xC020, 0x4049, 0x0000, 0x7F80, 0xFF80]
    array = decode_tensor(tensor((3, 2), common_pb2.DTYPE_BFLOAT16, struct.pack("<6H", *bits)))

    assert array.dtype == np.float32
    assert array.shape == (3, 2)
    np.testing.assert_array_equal(
        array, np.array([[1.0, -2.5], [3.140625, 0.0], [np.inf, -np.inf]], dtype=np.float32)
    )


def test_tensor_of_a_non_contiguous_array_keeps_its_logical_layout():
    # The server serialises whatever view it holds (here a transposed, non-contiguous one) in
    # C order; decoding must give back the view's values, not the base array's memory order.
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    view = base.transpose(2, 0, 1)
    assert not view.flags.c_contiguous
    wire = tensor(view.shape, common_pb2.DTYPE_FLOAT32, view.astype("<f4").tobytes(order="C"))

    decoded = decode_tensor(wire)

    assert decoded.shape == (4, 2, 3)
    np.testing.assert_array_equal(decoded, view)
    assert decoded.flags.c_contiguous


def test_tensor_edge_shapes_and_read_only():
    empty = decode_tensor(tensor((0, 5), common_pb2.DTYPE_FLOAT32, b""))
    scalar = decode_tensor(tensor((), common_pb2.DTYPE_INT32, struct.pack("<i", -3)))

    assert empty.shape == (0, 5)
    assert scalar.shape == () and scalar == -3
    with pytest.raises(ValueError):
        scalar[()] = 1  # results are frozen: so are their arrays


@pytest.mark.parametrize(
    "bad",
    [
        tensor((2, 3), common_pb2.DTYPE_FLOAT32, b"\0" * 20),  # one element short
        tensor((2,), common_pb2.DTYPE_UNSPECIFIED, b"\0" * 8),
        tensor((2,), 42, b"\0" * 8),
        tensor((-1, 2), common_pb2.DTYPE_INT32, b""),
    ],
)
def test_malformed_tensor_is_refused(bad):
    with pytest.raises(ValueError):
        decode_tensor(bad)


# --- requests -----------------------------------------------------------------------------------


def test_text_items_become_text_inputs():
    inputs = _convert.text_inputs(["solo", ("first", "second"), ""])

    assert [i.text for i in inputs] == ["solo", "first", ""]
    assert [i.HasField("text_pair") for i in inputs] == [False, True, False]
    assert inputs[1].text_pair == "second"


def test_a_single_string_is_not_taken_for_a_list_of_letters():
    with pytest.raises(TypeError, match="single str"):
        _convert.text_inputs("hello")


@pytest.mark.parametrize("item", [("a", "b", "c"), ["a", "b"], 3, ("a", 1)])
def test_a_malformed_item_is_named_by_index(item):
    with pytest.raises(TypeError, match=r"items\[1\]"):
        _convert.text_inputs(["fine", item])


def test_question_items_accept_tuples_and_dataclasses():
    inputs = _convert.question_contexts([("Who?", "Ada."), QuestionContext("When?", "1843.")])

    assert [(i.question, i.context) for i in inputs] == [("Who?", "Ada."), ("When?", "1843.")]
    with pytest.raises(TypeError, match=r"items\[0\]"):
        _convert.question_contexts(["just a question"])


def test_encode_options_map_pooling_and_leave_unset_to_the_server():
    default = _convert.encode_options(None, None, False, None)
    chosen = _convert.encode_options("mean", False, True, "e5")

    assert default.pooling == encoder_pb2.POOLING_UNSPECIFIED
    assert not default.HasField("normalize")  # None: the head decides, not "False"
    assert default.head == ""
    assert chosen.pooling == encoder_pb2.POOLING_MEAN
    assert chosen.HasField("normalize") and chosen.normalize is False
    assert (chosen.truncate, chosen.head) == (True, "e5")
    assert _convert.encode_options("none", None, False, None).pooling == encoder_pb2.POOLING_NONE
    with pytest.raises(ValueError, match="pooling"):
        _convert.encode_options("max", None, False, None)  # type: ignore[arg-type]


def test_encode_options_dimensions_prompts_and_truncation_side():
    default = _convert.encode_options(None, None, False, None)
    assert (default.dimensions, default.prompt_name) == (0, "")
    assert not default.HasField("prompt")  # None: the server's default prompt
    assert default.truncation_side == encoder_pb2.TRUNCATION_SIDE_UNSPECIFIED
    chosen = _convert.encode_options(None, True, True, None, 128, "query", None, "left")
    assert (chosen.dimensions, chosen.prompt_name) == (128, "query")
    assert chosen.truncation_side == encoder_pb2.TRUNCATION_SIDE_LEFT
    none = _convert.encode_options(None, None, False, None, prompt="")
    assert none.HasField("prompt") and none.prompt == ""  # "": no prompt at all
    with pytest.raises(ValueError, match="truncation_side"):
        _convert.encode_options(None, None, False, None, truncation_side="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimensions"):
        _convert.encode_options(None, None, False, None, dimensions=0)


def test_classify_heads_a_lone_string_is_one_head():
    assert list(_convert.classify_options("sentiment", 0, False).heads) == ["sentiment"]
    assert list(_convert.classify_options(("b", "a"), 2, False).heads) == ["b", "a"]


def test_chunking_options_for_encode_classify_and_their_run_heads_forms():
    from headserve.client import ClassifyHead, EncodeHead
    from headserve.v1 import classifier_pb2

    encode = _convert.head_call(
        EncodeHead("e", chunk_mode="late", chunk_tokens=64, chunk_overlap=8, chunk_by="sentences")
    ).encode
    assert (encode.chunk_mode, encode.chunk_tokens, encode.chunk_overlap, encode.chunk_by) == (
        encoder_pb2.CHUNK_MODE_LATE, 64, 8, encoder_pb2.CHUNK_BY_SENTENCES,
    )  # fmt: skip
    classify = _convert.head_call(ClassifyHead("c", long_text="max", return_chunks=True)).classify
    assert classify.long_text == classifier_pb2.LONG_TEXT_MAX and classify.return_chunks
    unset = _convert.encode_options(None, None, False, None)
    assert unset.chunk_mode == encoder_pb2.CHUNK_MODE_UNSPECIFIED and unset.chunk_tokens == 0
    for bad in ({"chunk_mode": "early"}, {"chunk_by": "words"}, {"chunk_tokens": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _convert.encode_options(None, None, False, None, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="long_text"):
        _convert.classify_options((), 0, False, long_text="median")  # type: ignore[arg-type]


# --- responses ----------------------------------------------------------------------------------


def test_encode_response_becomes_frozen_typed_result():
    response = encoder_pb2.EncodeResponse(
        results=[
            encoder_pb2.Embedding(vector=[1.0, 2.0]),
            encoder_pb2.Embedding(
                token_states=tensor((2, 1), common_pb2.DTYPE_FLOAT32, struct.pack("<2f", 4, 5)),
                tokens=["[CLS]", "hi"],
            ),
        ],
        usage=common_pb2.Usage(input_tokens=7),
        timing=common_pb2.Timing(queue_ms=1.5, inference_ms=2.5),
    )

    result = _convert.encode_result(response)

    assert len(result) == 2
    assert result[0].vector is not None and result[0].vector.dtype == np.float32
    np.testing.assert_array_equal(result[0].vector, [1.0, 2.0])
    assert result[0].token_states is None and result[1].vector is None
    assert result[1].token_states is not None
    np.testing.assert_array_equal(result[1].token_states, [[4.0], [5.0]])
    assert result[1].tokens == ("[CLS]", "hi")
    assert (result.usage.input_tokens, result.timing.queue_ms) == (7, 1.5)
    with pytest.raises(ValueError, match="pooling='none'"):
        result.vectors
    with pytest.raises(AttributeError):
        result.usage = None  # type: ignore[misc]


def test_token_prediction_span_is_a_tuple_and_logits_optional():
    response = token_predictor_pb2.PredictTokensResponse(
        results=[
            token_predictor_pb2.TokenPrediction(
                masks=[
                    token_predictor_pb2.MaskPrediction(
                        position=2,
                        span=common_pb2.Span(start=3, end=9),
                        candidates=[
                            token_predictor_pb2.TokenCandidate(
                                token_id=11, token="x", probability=0.5
                            )
                        ],
                    )
                ]
            )
        ]
    )

    prediction = _convert.predict_tokens_result(response)[0]

    assert prediction.logits is None
    assert prediction.masks[0].span == Span(3, 9) == (3, 9)
    assert "ab [MASK] c"[slice(*prediction.masks[0].span)] == "[MASK]"
    assert prediction.masks[0].candidates[0].token_id == 11


def test_stream_response_with_error_status_becomes_error_result():
    failed = encoder_pb2.EncodeStreamResponse(
        id="b7", error=status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="nope")
    )
    answered = encoder_pb2.EncodeStreamResponse(
        id="b8", response=encoder_pb2.EncodeResponse(results=[encoder_pb2.Embedding(vector=[1])])
    )

    bad = _convert.encode_stream_result(failed)
    good = _convert.encode_stream_result(answered)

    assert (bad.id, bad.ok, bad.result) == ("b7", False, None)
    assert isinstance(bad.error, NotFoundError)
    with pytest.raises(NotFoundError, match="nope"):
        bad.unwrap()
    assert (good.id, good.ok) == ("b8", True)
    assert len(good.unwrap()) == 1


# --- run (generic heads) ------------------------------------------------------------------------


def json_struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def test_run_request_carries_head_options_and_truncate():
    options = _convert.run_options({"threshold": 0.5, "top_k": 3, "mode": "simple", "x": None})
    request = _convert.run_request(["solo", ("a", "b")], "ner", options, True, "b1")

    assert (request.head, request.truncate, request.id) == ("ner", True, "b1")
    assert [i.text for i in request.items] == ["solo", "a"] and request.items[1].text_pair == "b"
    assert dict(request.options) == {"threshold": 0.5, "top_k": 3.0, "mode": "simple", "x": None}
    assert not _convert.run_request(["x"], "ner", _convert.run_options(None), False).HasField(
        "options"
    )  # None: the head's defaults


def test_run_options_nested_values_and_refusals():
    options = _convert.run_options({"labels": ["PER", "LOC"], "limits": {"min": 1, "on": True}})

    assert json_format.MessageToDict(options) == {
        "labels": ["PER", "LOC"],
        "limits": {"min": 1.0, "on": True},
    }
    with pytest.raises(TypeError, match=r"options\['bad'\]"):
        _convert.run_options({"bad": np.float32(0.5)})  # numpy scalars are not JSON
    with pytest.raises(ValueError, match=r"options\['nan'\]"):
        _convert.run_options({"nan": float("nan")})
    with pytest.raises(TypeError, match="names must be str"):
        _convert.run_options({1: 2})
    with pytest.raises(TypeError, match="mapping"):
        _convert.run_options([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="single str"):
        _convert.run_request("one text", "ner", None, False)


def test_run_response_becomes_head_outputs_with_fields_and_tensors():
    logits = np.array([[0.25, -1.5, 3.0], [1e-3, 65504.0, -0.0]], dtype=np.float32)
    ids = np.array([7, -2], dtype=np.int64)
    response = heads_pb2.RunResponse(
        head="ner",
        task="token_classification",
        results=[
            heads_pb2.HeadOutput(
                fields=json_struct(
                    {
                        "entities": [
                            {"label": "PER", "span": {"start": 0, "end": 3}, "score": 0.9}
                        ],
                        "language": "en",
                        "flagged": False,
                        "note": None,
                    }
                ),
                tensors={
                    "logits": tensor(
                        (2, 3), common_pb2.DTYPE_FLOAT32, logits.astype("<f4").tobytes()
                    ),
                    "ids": tensor((2,), common_pb2.DTYPE_INT64, ids.astype("<i8").tobytes()),
                },
            ),
            heads_pb2.HeadOutput(),  # nothing: every field and tensor optional
        ],
        usage=common_pb2.Usage(input_tokens=9),
        timing=common_pb2.Timing(queue_ms=0.5, inference_ms=4.0),
    )

    result = _convert.run_result(response)

    assert isinstance(result, RunResult)
    assert (result.head, result.task, len(result)) == ("ner", "token_classification", 2)
    assert result[0] is result.outputs[0] and isinstance(result[0], HeadOutput)
    output = result[0]
    assert output.fields == {
        "entities": [{"label": "PER", "span": {"start": 0.0, "end": 3.0}, "score": 0.9}],
        "language": "en",
        "flagged": False,
        "note": None,
    }
    start = output["entities"][0]["span"]["start"]
    assert type(start) is float and start == 0  # JSON numbers come back as float
    assert output.tensors["logits"].dtype == np.float32 and output["logits"].shape == (2, 3)
    np.testing.assert_array_equal(output["logits"], logits)  # float32 round trip, bit for bit
    np.testing.assert_array_equal(output["ids"], ids)
    assert output["ids"].dtype == np.int64
    with pytest.raises(ValueError):
        output["logits"][0, 0] = 1.0  # read-only
    assert "language" in output and "logits" in output and "missing" not in output
    assert set(output) == {"entities", "language", "flagged", "note", "logits", "ids"}
    assert output.get("missing", 3) == 3 and output.get("note", 3) is None
    with pytest.raises(KeyError):
        output["missing"]
    assert (result[1].fields, result[1].tensors) == ({}, {})
    assert (result.usage.input_tokens, result.timing.inference_ms) == (9, 4.0)
    with pytest.raises(AttributeError):
        result.head = "other"  # type: ignore[misc]


def test_non_finite_numbers_a_head_returned_survive():
    response = heads_pb2.RunResponse(
        results=[
            heads_pb2.HeadOutput(
                fields=json_struct({"scores": [float("nan"), float("inf")], "x": -float("inf")})
            )
        ]
    )

    fields = _convert.run_result(response)[0].fields

    assert np.isnan(fields["scores"][0]) and fields["scores"][1] == float("inf")
    assert fields["x"] == -float("inf")


def test_run_stream_response_with_error_fails_that_batch_only():
    failed = heads_pb2.RunStreamResponse(
        id="r1", error=status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="no head")
    )
    answered = heads_pb2.RunStreamResponse(
        id="r2", response=heads_pb2.RunResponse(head="ner", results=[heads_pb2.HeadOutput()])
    )

    bad, good = _convert.run_stream_result(failed), _convert.run_stream_result(answered)

    assert (bad.id, bad.ok) == ("r1", False) and isinstance(bad.error, NotFoundError)
    assert (good.id, good.ok, good.unwrap().head, len(good.unwrap())) == ("r2", True, "ner", 1)


def test_head_info_lists_outputs_and_parameters():
    info = _convert.model_info(
        models_pb2.ModelInfo(
            heads=[
                models_pb2.HeadInfo(
                    name="ner",
                    task="token_classification",
                    outputs=[
                        models_pb2.OutputField(
                            name="entities",
                            kind=models_pb2.OutputField.KIND_VALUE,
                            type="list<object{label:string,score:number}>",
                            description="the entities",
                        ),
                        models_pb2.OutputField(
                            name="logits",
                            kind=models_pb2.OutputField.KIND_TENSOR,
                            type="float32",
                            shape="[tokens, labels]",
                            optional=True,
                        ),
                    ],
                    parameters=[
                        models_pb2.ParameterInfo(
                            name="aggregation",
                            type="string",
                            default='"simple"',
                            choices=["none", "simple"],
                        ),
                        models_pb2.ParameterInfo(name="threshold", type="number", default="0.5"),
                        models_pb2.ParameterInfo(name="top_k", type="integer", default="3"),
                        models_pb2.ParameterInfo(name="logits", type="boolean", default="false"),
                        models_pb2.ParameterInfo(name="labels", type="string", default="null"),
                        models_pb2.ParameterInfo(name="unset", type="string"),
                        models_pb2.ParameterInfo(name="raw", type="string", default="not json"),
                    ],
                ),
                models_pb2.HeadInfo(name="encode", task="encode"),
            ]
        )
    )

    ner = info.head("ner")
    assert ner.outputs == (
        OutputField(
            name="entities",
            kind="value",
            type="list<object{label:string,score:number}>",
            shape="",
            description="the entities",
            optional=False,
        ),
        OutputField(
            name="logits",
            kind="tensor",
            type="float32",
            shape="[tokens, labels]",
            description="",
            optional=True,
        ),
    )
    assert ner.parameters[0] == ParameterInfo(
        name="aggregation",
        type="string",
        default="simple",
        description="",
        choices=("none", "simple"),
    )
    assert [p.default for p in ner.parameters] == ["simple", 0.5, 3, False, None, None, "not json"]
    assert type(ner.parameters[2].default) is int
    assert (info.head("encode").outputs, info.head("encode").parameters) == ((), ())


# --- errors -------------------------------------------------------------------------------------


def pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_status_with_bad_request_and_error_info_becomes_invalid_argument():
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="items[3].text is empty",
        details=[
            pack(
                error_details_pb2.ErrorInfo(
                    reason="EMPTY_TEXT", domain="headserve", metadata={"item": "3"}
                )
            ),
            pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="items[3].text", description="must not be empty"
                        ),
                        error_details_pb2.BadRequest.FieldViolation(
                            field="options.top_k", description="negative"
                        ),
                    ]
                )
            ),
        ],
    )

    error = errors.from_status(status)

    assert isinstance(error, InvalidArgumentError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.field, error.item) == ("items[3].text", 3)
    assert [v.field for v in error.field_violations] == ["items[3].text", "options.top_k"]
    assert error.field_violations[1].item is None
    assert error.field_violations[0].description == "must not be empty"
    assert error.reason == "EMPTY_TEXT"
    assert dict(error.metadata) == {"item": "3"}
    assert str(error) == "INVALID_ARGUMENT: items[3].text is empty"
    assert error.message == "items[3].text is empty"


def test_invalid_argument_without_details_has_no_field():
    error = errors.from_status(
        status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="bad")
    )

    assert isinstance(error, InvalidArgumentError)
    assert (error.field, error.item, error.field_violations, error.reason) == (None, None, (), "")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, HeadserveError),
        (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
    ],
)
def test_each_code_maps_to_its_class(code, cls):
    error = errors.from_status(status_pb2.Status(code=code.value[0], message="m"))

    assert type(error) is cls
    assert error.code == code


def test_builtin_bases_let_generic_handlers_catch_timeouts_and_connection_errors():
    deadline = errors.from_status(status_pb2.Status(code=4, message="slow"))
    unavailable = errors.from_status(status_pb2.Status(code=14, message="down"))

    assert isinstance(deadline, TimeoutError) and isinstance(deadline, HeadserveError)
    assert isinstance(unavailable, ConnectionError)
    assert str(deadline) == "DEADLINE_EXCEEDED: slow"  # OSError's (errno, strerror) stays out


def test_unknown_code_number_and_unknown_detail_survive():
    custom = wrappers_pb2.StringValue(value="opaque")
    error = errors.from_status(status_pb2.Status(code=99, message="?", details=[pack(custom)]))

    assert type(error) is HeadserveError and error.code == grpc.StatusCode.UNKNOWN
    assert isinstance(error.details[0], any_pb2.Any)
    assert error.details[0].Is(wrappers_pb2.StringValue.DESCRIPTOR)


def test_retry_info_gives_retry_delay():
    status = status_pb2.Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        message="queue full",
        details=[
            pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=250_000_000)))
        ],
    )

    error = errors.from_status(status)

    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_delay == pytest.approx(0.25)


class FakeCallError(grpc.RpcError):
    """What a failed call raises: an RpcError that is also a grpc.Call."""

    def __init__(self, code, details, trailing=()):
        self._code, self._details, self._trailing = code, details, tuple(trailing)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def test_rpc_error_details_come_from_trailing_metadata():
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="bad item",
        details=[
            pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field="items[12].text_pair")
                    ]
                )
            )
        ],
    )
    call = FakeCallError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad item",
        [("other", "x"), ("grpc-status-details-bin", status.SerializeToString())],
    )

    error = errors.from_rpc_error(call)

    assert isinstance(error, InvalidArgumentError)
    assert (error.item, error.message) == (12, "bad item")


def test_rpc_error_whose_rich_status_disagrees_keeps_call_code_and_details():
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="rewritten elsewhere",
        details=[pack(error_details_pb2.ErrorInfo(reason="EMPTY_TEXT"))],
    )
    call = FakeCallError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "original",
        [("grpc-status-details-bin", status.SerializeToString())],
    )

    error = errors.from_rpc_error(call)

    assert (type(error), error.message, error.reason) == (
        InvalidArgumentError,
        "original",
        "EMPTY_TEXT",
    )


def test_rpc_error_without_rich_status():
    error = errors.from_rpc_error(FakeCallError(grpc.StatusCode.UNAVAILABLE, "connect failed"))

    assert isinstance(error, UnavailableError)
    assert (error.message, error.details) == ("connect failed", ())


# --- retry policy and settings ------------------------------------------------------------------


def test_only_unavailable_and_resource_exhausted_are_retried_and_capped():
    unavailable = errors.from_status(status_pb2.Status(code=14))
    exhausted = errors.from_status(status_pb2.Status(code=8))
    invalid = errors.from_status(status_pb2.Status(code=3))

    assert _retry.retry_delay(unavailable, 0, 2, None) is not None
    assert _retry.retry_delay(exhausted, 1, 2, None) is not None
    assert _retry.retry_delay(exhausted, 2, 2, None) is None  # max_retries spent
    assert _retry.retry_delay(invalid, 0, 2, None) is None
    assert _retry.retry_delay(unavailable, 0, 0, None) is None


def _exhausted(message: str, reason: str | None) -> HeadserveError:
    details = []
    if reason is not None:
        details.append(pack(error_details_pb2.ErrorInfo(reason=reason, domain="headserve")))
    return errors.from_status(status_pb2.Status(code=8, message=message, details=details))


@pytest.mark.parametrize(
    ("message", "reason", "retried"),
    [
        ("queue full (4 of 4 rows waiting); retry later", "OVERLOADED", True),
        ("Concurrent RPC limit exceeded!", None, True),  # gRPC's cap: no ErrorInfo
        ("the model ran out of memory on one row of 512 tokens", "OUT_OF_MEMORY", False),
        ("Received message larger than max (20000000 vs. 16777216)", None, False),
        ("a reason this client does not know", "SOMETHING_NEW", False),
    ],
)
def test_resource_exhausted_is_retried_only_when_it_is_overload(
    message: str, reason: str | None, retried: bool
) -> None:
    error = _exhausted(message, reason)
    assert _retry.may_succeed_later(error) is retried
    assert (_retry.retry_delay(error, 0, 2, None) is not None) is retried


def test_internal_is_retried_only_when_headserve_did_not_send_it() -> None:
    """headserve's own INTERNAL (a bug) carries its ErrorInfo; one without it comes from a proxy
    whose replica died under the call (Ray Serve's proxy answers so) and may succeed again."""
    died = errors.from_status(
        status_pb2.Status(
            code=13, message="The actor died unexpectedly before finishing this task."
        )
    )
    info = pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain="headserve"))
    bug = errors.from_status(
        status_pb2.Status(code=13, message="internal error: KeyError('x')", details=[info])
    )
    assert _retry.may_succeed_later(died) and _retry.retry_delay(died, 0, 2, None) is not None
    assert not _retry.may_succeed_later(bug) and _retry.retry_delay(bug, 0, 2, None) is None


def test_backoff_grows_is_jittered_and_capped():
    for attempt in range(12):
        ceiling = min(_retry.MAX_BACKOFF_S, _retry.INITIAL_BACKOFF_S * 2**attempt)
        delays = [_retry.backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert len({_retry.backoff(3) for _ in range(20)}) > 1


def test_no_retry_past_the_deadline():
    import time

    unavailable = errors.from_status(status_pb2.Status(code=14))

    assert _retry.retry_delay(unavailable, 0, 5, time.monotonic() + 0.001) is None


def test_settings_are_validated_and_replace_copies():
    settings = Settings.create(timeout=3.0, max_retries=1, metadata=[("k", "v")])
    changed = settings.replace(timeout=None, max_retries=NOT_GIVEN, metadata=NOT_GIVEN)

    assert (settings.timeout, changed.timeout, changed.max_retries) == (3.0, None, 1)
    assert changed.metadata == (("k", "v"),)
    with pytest.raises(ValueError):
        Settings.create(timeout=0, max_retries=1, metadata=())
    with pytest.raises(ValueError):
        settings.replace(timeout=NOT_GIVEN, max_retries=-1, metadata=NOT_GIVEN)


def test_a_classification_carries_each_labels_logit_and_the_heads_activation() -> None:
    from headserve.v1 import classifier_pb2

    message = classifier_pb2.HeadClassification(
        head="ce",
        labels=[
            classifier_pb2.LabelScore(label="relevant", probability=0.75, logit=1.0986),
            classifier_pb2.LabelScore(label="older", probability=0.25),  # an older server
        ],
        activation="sigmoid",
    )
    result = _convert.head_classification(message)
    assert result.activation == "sigmoid"
    assert result.labels[0].logit == pytest.approx(1.0986, abs=1e-4)
    assert result.labels[1].logit is None
    assert _convert.head_classification(classifier_pb2.HeadClassification()).activation == ""


def test_model_info_carries_the_family_and_each_heads_settings() -> None:
    message = models_pb2.ModelInfo(
        backbone=models_pb2.BackboneInfo(
            model_type="modernbert",
            family="ModernBERT",
            verified=True,
            packing="packed, block-diagonal mask; local layers' window in the mask",
        ),
        heads=[models_pb2.HeadInfo(name="e", task="encode", settings={"pooling": "mean"})],
    )
    info = _convert.model_info(message)
    assert (info.backbone.family, info.backbone.verified) == ("ModernBERT", True)
    assert info.backbone.packing.startswith("packed")
    assert info.heads[0].settings == {"pooling": "mean"}
    older = _convert.model_info(models_pb2.ModelInfo(heads=[models_pb2.HeadInfo(name="e")]))
    assert (older.backbone.family, older.backbone.verified, older.heads[0].settings) == (
        "",
        False,
        {},
    )
