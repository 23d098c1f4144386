"""Between the client's Python values and the ``headserve.v1`` messages, both ways.

Pure functions, shared by the sync and async clients: request builders check what only the
client can know (a ``str`` where a sequence of items was meant, a malformed item) and leave the
rest to the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

import grpc
import numpy as np
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from headserve.v1 import (
    admin_pb2,
    classifier_pb2,
    common_pb2,
    encoder_pb2,
    heads_pb2,
    models_pb2,
    question_answerer_pb2,
    ranker_pb2,
    token_predictor_pb2,
)

from . import errors
from ._tensor import decode_tensor
from .types import (
    Answer,
    AnswerQuestionHead,
    AnswerQuestionResult,
    BackboneInfo,
    ChunkBy,
    ChunkClassification,
    ChunkMode,
    Classification,
    ClassifyHead,
    ClassifyResult,
    Embedding,
    EmbeddingChunk,
    EncodeHead,
    EncodeResult,
    GenericHead,
    HeadChange,
    HeadClassification,
    HeadInfo,
    HeadOutput,
    HeadRan,
    HeadResult,
    HeadSpec,
    HeadValue,
    ImageInputInfo,
    LabelScore,
    LongText,
    MaskPrediction,
    ModelInfo,
    OutputField,
    ParameterInfo,
    PluginFailure,
    Pooling,
    PredictTokensHead,
    PredictTokensResult,
    QuestionAnswer,
    QuestionContext,
    QuestionItem,
    RankedDocument,
    RequestLimits,
    RerankResult,
    RunHeadsResult,
    RunResult,
    SchedulerInfo,
    ShadowInfo,
    Span,
    SparseVector,
    StreamResult,
    TextItem,
    Timing,
    TokenCandidate,
    Tokenization,
    TokenPrediction,
    TruncationSide,
    Usage,
)

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_POOLING: dict[str | None, encoder_pb2.Pooling.ValueType] = {
    None: encoder_pb2.POOLING_UNSPECIFIED,
    "cls": encoder_pb2.POOLING_CLS,
    "mean": encoder_pb2.POOLING_MEAN,
    "none": encoder_pb2.POOLING_NONE,
    "lasttoken": encoder_pb2.POOLING_LAST_TOKEN,
}


# --- requests -----------------------------------------------------------------------------------


def text_inputs(items: Sequence[TextItem]) -> list[common_pb2.TextInput]:
    """``str`` -> ``TextInput(text)``, ``(text, pair)`` -> ``TextInput(text, text_pair)``,
    ``bytes`` or a path -> ``TextInput(image=Image(data))`` (the file is read here)."""
    _check_sequence(items)
    inputs = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            inputs.append(common_pb2.TextInput(text=item))
        elif isinstance(item, tuple) and _is_str_pair(item):
            text, pair = item
            inputs.append(common_pb2.TextInput(text=text, text_pair=pair))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            inputs.append(common_pb2.TextInput(image=common_pb2.Image(data=bytes(item))))
        elif isinstance(item, os.PathLike):
            with open(item, "rb") as f:
                inputs.append(common_pb2.TextInput(image=common_pb2.Image(data=f.read())))
        else:
            raise TypeError(
                f"items[{index}]: expected a str, a (text, text_pair) tuple of str, image "
                f"bytes or an image's path, got {item!r}"
            )
    return inputs


def question_contexts(items: Sequence[QuestionItem]) -> list[question_answerer_pb2.QuestionContext]:
    """``(question, context)`` or :class:`QuestionContext` -> ``headserve.v1.QuestionContext``."""
    _check_sequence(items)
    inputs = []
    for index, item in enumerate(items):
        if isinstance(item, QuestionContext):
            question, context = item.question, item.context
        elif _is_str_pair(item):
            question, context = item
        else:
            raise TypeError(
                f"items[{index}]: expected a (question, context) tuple of str or a "
                f"QuestionContext, got {item!r}"
            )
        inputs.append(question_answerer_pb2.QuestionContext(question=question, context=context))
    return inputs


def encode_request(
    items: Sequence[TextItem], options: encoder_pb2.EncodeOptions, id: str = ""
) -> encoder_pb2.EncodeRequest:
    """An ``EncodeRequest`` (``id`` only matters in a stream)."""
    return encoder_pb2.EncodeRequest(items=text_inputs(items), options=options, id=id)


_TRUNCATION_SIDE: dict[str | None, encoder_pb2.TruncationSide.ValueType] = {
    None: encoder_pb2.TRUNCATION_SIDE_UNSPECIFIED,
    "right": encoder_pb2.TRUNCATION_SIDE_RIGHT,
    "left": encoder_pb2.TRUNCATION_SIDE_LEFT,
}


_CHUNK_MODE: dict[str | None, encoder_pb2.ChunkMode.ValueType] = {
    None: encoder_pb2.CHUNK_MODE_UNSPECIFIED,
    "none": encoder_pb2.CHUNK_MODE_NONE,
    "independent": encoder_pb2.CHUNK_MODE_INDEPENDENT,
    "late": encoder_pb2.CHUNK_MODE_LATE,
}

_CHUNK_BY: dict[str | None, encoder_pb2.ChunkBy.ValueType] = {
    None: encoder_pb2.CHUNK_BY_UNSPECIFIED,
    "tokens": encoder_pb2.CHUNK_BY_TOKENS,
    "sentences": encoder_pb2.CHUNK_BY_SENTENCES,
}


def encode_options(
    pooling: Pooling | None,
    normalize: bool | None,
    truncate: bool,
    head: str | None,
    dimensions: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    truncation_side: TruncationSide | None = None,
    sparse_top_k: int | None = None,
    sparse_min_weight: float | None = None,
    chunk_mode: ChunkMode | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    chunk_by: ChunkBy | None = None,
) -> encoder_pb2.EncodeOptions:
    """``EncodeOptions``; ``None`` leaves an option to the server."""
    if chunk_mode not in _CHUNK_MODE:
        raise ValueError(
            f"chunk_mode must be 'none', 'independent', 'late' or None, not {chunk_mode!r}"
        )
    if pooling not in _POOLING:
        raise ValueError(f"pooling must be 'cls', 'mean', 'none' or None, not {pooling!r}")
    if truncation_side not in _TRUNCATION_SIDE:
        raise ValueError(
            f"truncation_side must be 'right', 'left' or None, not {truncation_side!r}"
        )
    if dimensions is not None and dimensions < 1:
        raise ValueError(f"dimensions must be at least 1 (or None for all), not {dimensions}")
    return encoder_pb2.EncodeOptions(
        pooling=_POOLING[pooling],
        normalize=normalize,
        truncate=truncate,
        head=head or "",
        dimensions=dimensions or 0,
        prompt_name=prompt_name or "",
        prompt=prompt,
        truncation_side=_TRUNCATION_SIDE[truncation_side],
        sparse_top_k=sparse_top_k or 0,
        sparse_min_weight=sparse_min_weight or 0.0,
        chunk_mode=_CHUNK_MODE[chunk_mode],
        **_chunking(chunk_tokens, chunk_overlap, chunk_by),
    )


def predict_tokens_request(
    items: Sequence[TextItem], options: token_predictor_pb2.PredictTokensOptions, id: str = ""
) -> token_predictor_pb2.PredictTokensRequest:
    """A ``PredictTokensRequest``."""
    return token_predictor_pb2.PredictTokensRequest(
        items=text_inputs(items), options=options, id=id
    )


def predict_tokens_options(
    top_k: int | None, return_logits: bool, truncate: bool, head: str | None
) -> token_predictor_pb2.PredictTokensOptions:
    """``PredictTokensOptions``; ``None`` (sent as 0, unset) takes the server's default."""
    return token_predictor_pb2.PredictTokensOptions(
        top_k=top_k or 0, return_logits=return_logits, truncate=truncate, head=head or ""
    )


def classify_request(
    items: Sequence[TextItem], options: classifier_pb2.ClassifyOptions, id: str = ""
) -> classifier_pb2.ClassifyRequest:
    """A ``ClassifyRequest``."""
    return classifier_pb2.ClassifyRequest(items=text_inputs(items), options=options, id=id)


_LONG_TEXT: dict[str | None, classifier_pb2.LongText.ValueType] = {
    None: classifier_pb2.LONG_TEXT_UNSPECIFIED,
    "mean": classifier_pb2.LONG_TEXT_MEAN,
    "max": classifier_pb2.LONG_TEXT_MAX,
    "first": classifier_pb2.LONG_TEXT_FIRST,
}


def classify_options(
    heads: str | Sequence[str],
    top_k: int,
    truncate: bool,
    long_text: LongText | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    chunk_by: ChunkBy | None = None,
    return_chunks: bool = False,
) -> classifier_pb2.ClassifyOptions:
    """``ClassifyOptions``; a lone ``str`` is one head name, not a sequence of letters."""
    names = [heads] if isinstance(heads, str) else list(heads)
    if long_text not in _LONG_TEXT:
        raise ValueError(f"long_text must be 'mean', 'max', 'first' or None, not {long_text!r}")
    return classifier_pb2.ClassifyOptions(
        heads=names,
        top_k=top_k,
        truncate=truncate,
        long_text=_LONG_TEXT[long_text],
        **_chunking(chunk_tokens, chunk_overlap, chunk_by),
        return_chunks=return_chunks,
    )


def _chunking(
    chunk_tokens: int | None, chunk_overlap: int | None, chunk_by: ChunkBy | None
) -> dict[str, Any]:
    """The chunk fields Encode and Classify share, checked."""
    if chunk_by not in _CHUNK_BY:
        raise ValueError(f"chunk_by must be 'tokens', 'sentences' or None, not {chunk_by!r}")
    for name, value in (("chunk_tokens", chunk_tokens), ("chunk_overlap", chunk_overlap)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be at least 0, not {value}")
    return {
        "chunk_tokens": chunk_tokens or 0,
        "chunk_overlap": chunk_overlap or 0,
        "chunk_by": _CHUNK_BY[chunk_by],
    }


def answer_question_request(
    items: Sequence[QuestionItem],
    options: question_answerer_pb2.AnswerQuestionOptions,
    id: str = "",
) -> question_answerer_pb2.AnswerQuestionRequest:
    """An ``AnswerQuestionRequest``."""
    return question_answerer_pb2.AnswerQuestionRequest(
        items=question_contexts(items), options=options, id=id
    )


def answer_question_options(
    top_k: int | None,
    max_answer_length: int | None,
    doc_stride: int | None,
    allow_no_answer: bool,
    head: str | None,
) -> question_answerer_pb2.AnswerQuestionOptions:
    """``AnswerQuestionOptions``; ``None`` (sent as 0, unset) takes the server's default."""
    return question_answerer_pb2.AnswerQuestionOptions(
        top_k=top_k or 0,
        max_answer_length=max_answer_length or 0,
        doc_stride=doc_stride or 0,
        allow_no_answer=allow_no_answer,
        head=head or "",
    )


def run_request(
    items: Sequence[TextItem],
    head: str,
    options: struct_pb2.Struct | None,
    truncate: bool,
    id: str = "",
) -> heads_pb2.RunRequest:
    """A ``RunRequest`` of ``head`` (``options`` from :func:`run_options`)."""
    return heads_pb2.RunRequest(
        items=text_inputs(items), options=options, id=id, head=head, truncate=truncate
    )


def run_options(options: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """A head's own options as a ``Struct``; ``None`` sends none (the head's defaults).

    Values must be JSON: ``str``, ``int``, ``float``, ``bool``, ``None``, lists and dicts with
    ``str`` keys. Numbers travel as doubles. A value that is not JSON raises, naming its option.
    """
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of option name to value, got {options!r}")
    struct = struct_pb2.Struct()
    for name, value in options.items():
        if not isinstance(name, str):
            raise TypeError(f"options: names must be str, got {name!r}")
        try:
            json.dumps(value, allow_nan=False)  # refuses NaN, infinities and non-JSON types
            struct.update({name: value})
        except (TypeError, ValueError) as error:
            raise type(error)(
                f"options[{name!r}]: not a JSON value ({error}): {value!r}"
            ) from error
    return struct


def tokenize_request(
    items: Sequence[TextItem], add_special_tokens: bool, truncate: bool
) -> models_pb2.TokenizeRequest:
    """A ``TokenizeRequest``."""
    return models_pb2.TokenizeRequest(
        items=text_inputs(items), add_special_tokens=add_special_tokens, truncate=truncate
    )


def _check_sequence(items: object) -> None:
    # A str is a Sequence[str] to the type checker: catch it before it becomes one item a letter.
    if isinstance(items, (str, bytes)):
        raise TypeError(
            "items must be a sequence of items, not a single str or bytes; wrap it: [item]"
        )


def _is_str_pair(item: object) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], str)
    )


# --- responses ----------------------------------------------------------------------------------


def usage(message: common_pb2.Usage) -> Usage:
    """:class:`Usage` from its message."""
    return Usage(input_tokens=message.input_tokens)


def timing(message: common_pb2.Timing) -> Timing:
    """:class:`Timing` from its message."""
    return Timing(queue_ms=message.queue_ms, inference_ms=message.inference_ms)


def span(message: common_pb2.Span) -> Span:
    """:class:`Span` from its message."""
    return Span(message.start, message.end)


def embedding(message: encoder_pb2.Embedding) -> Embedding:
    """:class:`Embedding`: an empty ``vector`` or an unset ``token_states`` becomes ``None``."""
    vector = None
    if len(message.vector):
        vector = np.asarray(message.vector, dtype=np.float32)
        vector.flags.writeable = False
    sparse = None
    if message.HasField("sparse"):
        terms = message.sparse
        sparse = SparseVector(tuple(terms.token_ids), tuple(terms.tokens), tuple(terms.weights))
    return Embedding(
        vector=vector,
        token_states=(
            decode_tensor(message.token_states) if message.HasField("token_states") else None
        ),
        tokens=tuple(message.tokens),
        sparse=sparse,
        chunks=tuple(_chunk(c) for c in message.chunks),
    )


def _chunk(message: encoder_pb2.EmbeddingChunk) -> EmbeddingChunk:
    vector = np.asarray(message.vector, dtype=np.float32)
    vector.flags.writeable = False
    return EmbeddingChunk(vector, message.start, message.end, message.tokens)


def encode_result(message: encoder_pb2.EncodeResponse) -> EncodeResult:
    """:class:`EncodeResult` from ``EncodeResponse``."""
    return EncodeResult(
        embeddings=tuple(embedding(e) for e in message.results),
        usage=usage(message.usage),
        timing=timing(message.timing),
    )


def token_prediction(message: token_predictor_pb2.TokenPrediction) -> TokenPrediction:
    """:class:`TokenPrediction`; unset ``logits`` becomes ``None``."""
    return TokenPrediction(
        masks=tuple(
            MaskPrediction(
                position=mask.position,
                span=span(mask.span),
                candidates=tuple(
                    TokenCandidate(token_id=c.token_id, token=c.token, probability=c.probability)
                    for c in mask.candidates
                ),
            )
            for mask in message.masks
        ),
        logits=decode_tensor(message.logits) if message.HasField("logits") else None,
    )


def predict_tokens_result(
    message: token_predictor_pb2.PredictTokensResponse,
) -> PredictTokensResult:
    """:class:`PredictTokensResult` from ``PredictTokensResponse``."""
    return PredictTokensResult(
        predictions=tuple(token_prediction(p) for p in message.results),
        usage=usage(message.usage),
        timing=timing(message.timing),
    )


def head_classification(message: classifier_pb2.HeadClassification) -> HeadClassification:
    """:class:`HeadClassification` from its message."""
    return HeadClassification(
        head=message.head,
        multi_label=message.multi_label,
        labels=_label_scores(message.labels),
        activation=message.activation,
        chunks=tuple(
            ChunkClassification(c.start, c.end, c.tokens, _label_scores(c.labels))
            for c in message.chunks
        ),
    )


def _label_scores(
    messages: Iterable[classifier_pb2.LabelScore],
) -> tuple[LabelScore, ...]:
    return tuple(
        LabelScore(
            label=s.label,
            probability=s.probability,
            logit=s.logit if s.HasField("logit") else None,
        )
        for s in messages
    )


def classify_result(message: classifier_pb2.ClassifyResponse) -> ClassifyResult:
    """:class:`ClassifyResult` from ``ClassifyResponse``."""
    return ClassifyResult(
        classifications=tuple(
            Classification(heads=tuple(head_classification(h) for h in c.heads))
            for c in message.results
        ),
        usage=usage(message.usage),
        timing=timing(message.timing),
    )


def rerank_request(
    query: str,
    documents: Sequence[str],
    head: str | None,
    top_n: int | None,
    return_documents: bool,
    truncate: bool,
    id: str = "",
) -> ranker_pb2.RerankRequest:
    """A ``RerankRequest`` (``id`` only matters in a stream)."""
    if isinstance(documents, str):
        raise TypeError("documents must be a sequence of strings, not one string")
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be at least 1 (or None for all), not {top_n}")
    options = ranker_pb2.RerankOptions(
        head=head or "", top_n=top_n or 0, return_documents=return_documents, truncate=truncate
    )
    return ranker_pb2.RerankRequest(query=query, documents=documents, options=options, id=id)


def rerank_result(message: ranker_pb2.RerankResponse) -> RerankResult:
    """:class:`RerankResult` from ``RerankResponse``."""
    return RerankResult(
        results=tuple(
            RankedDocument(index=r.index, score=r.score, document=r.document or None)
            for r in message.results
        ),
        head=message.head,
        usage=usage(message.usage),
        timing=timing(message.timing),
    )


def question_answer(message: question_answerer_pb2.QuestionAnswer) -> QuestionAnswer:
    """:class:`QuestionAnswer` from its message."""
    return QuestionAnswer(
        answers=tuple(
            Answer(text=a.text, score=a.score, start=a.start, end=a.end, no_answer=a.no_answer)
            for a in message.answers
        ),
        windows=message.windows,
    )


def answer_question_result(
    message: question_answerer_pb2.AnswerQuestionResponse,
) -> AnswerQuestionResult:
    """:class:`AnswerQuestionResult` from ``AnswerQuestionResponse``."""
    return AnswerQuestionResult(
        answers=tuple(question_answer(qa) for qa in message.results),
        usage=usage(message.usage),
        timing=timing(message.timing),
    )


def json_value(message: struct_pb2.Value) -> Any:
    """A ``google.protobuf.Value`` as plain Python; every number is a ``float``.

    Unlike ``json_format.MessageToDict``, a NaN or an infinity a head returned (a score of
    nothing) comes back as that float instead of failing the whole result.
    """
    kind = message.WhichOneof("kind")
    if kind == "struct_value":
        return json_object(message.struct_value)
    if kind == "list_value":
        return [json_value(v) for v in message.list_value.values]
    if kind == "number_value":
        return message.number_value
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    return None  # null_value, or no value at all


def json_object(message: struct_pb2.Struct) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as a plain ``dict`` (see :func:`json_value`)."""
    return {name: json_value(value) for name, value in message.fields.items()}


def head_output(message: heads_pb2.HeadOutput) -> HeadOutput:
    """:class:`HeadOutput`: ``fields`` as plain Python (numbers as ``float``), tensors as numpy."""
    return HeadOutput(
        fields=json_object(message.fields),
        tensors={name: decode_tensor(t) for name, t in message.tensors.items()},
    )


def run_result(message: heads_pb2.RunResponse) -> RunResult:
    """:class:`RunResult` from ``RunResponse``."""
    return RunResult(
        head=message.head,
        task=message.task,
        outputs=tuple(head_output(o) for o in message.results),
        usage=usage(message.usage),
        timing=timing(message.timing),
    )


def run_heads_request(
    items: Sequence[TextItem],
    heads: Sequence[HeadSpec],
    truncate: bool,
    id: str = "",
    calls: Sequence[heads_pb2.HeadCall] | None = None,
) -> heads_pb2.RunHeadsRequest:
    """A ``RunHeadsRequest``: a head given by name alone takes its task's default options.
    ``calls``: the heads already converted (a stream converts them once)."""
    if isinstance(heads, str):
        raise TypeError("heads must be a sequence of heads, not one string")
    if calls is None:
        calls = [head_call(h, index) for index, h in enumerate(heads)]
    return heads_pb2.RunHeadsRequest(
        items=text_inputs(items), heads=calls, truncate=truncate, id=id
    )


def head_call(spec: HeadSpec, index: int = 0) -> heads_pb2.HeadCall:
    """A ``HeadCall`` from a head's name or its options (:class:`EncodeHead`...)."""
    if isinstance(spec, str):
        return heads_pb2.HeadCall(head=spec)
    if isinstance(spec, EncodeHead):
        encode = encode_options(
            spec.pooling,
            spec.normalize,
            spec.truncate,
            None,
            spec.dimensions,
            spec.prompt_name,
            spec.prompt,
            spec.truncation_side,
            spec.sparse_top_k,
            spec.sparse_min_weight,
            spec.chunk_mode,
            spec.chunk_tokens,
            spec.chunk_overlap,
            spec.chunk_by,
        )
        return heads_pb2.HeadCall(head=spec.head, encode=encode)
    if isinstance(spec, ClassifyHead):
        classify = classify_options(
            (),
            spec.top_k,
            spec.truncate,
            spec.long_text,
            spec.chunk_tokens,
            spec.chunk_overlap,
            spec.chunk_by,
            spec.return_chunks,
        )
        return heads_pb2.HeadCall(head=spec.head, classify=classify)
    if isinstance(spec, PredictTokensHead):
        predict = predict_tokens_options(spec.top_k, spec.return_logits, spec.truncate, None)
        return heads_pb2.HeadCall(head=spec.head, predict_tokens=predict)
    if isinstance(spec, AnswerQuestionHead):
        answer = answer_question_options(
            spec.top_k, spec.max_answer_length, spec.doc_stride, spec.allow_no_answer, None
        )
        return heads_pb2.HeadCall(head=spec.head, answer_question=answer)
    if isinstance(spec, GenericHead):
        return heads_pb2.HeadCall(head=spec.head, params=run_options(spec.options))
    raise TypeError(
        f"heads[{index}]: expected a head name or EncodeHead, ClassifyHead, PredictTokensHead, "
        f"AnswerQuestionHead or GenericHead, got {spec!r}"
    )


def head_result(message: heads_pb2.HeadResult, head: str) -> HeadResult:
    """:class:`HeadResult`: the head's value for one item, or its error."""
    kind = message.WhichOneof("result")
    value: HeadValue
    if kind == "embedding":
        value = embedding(message.embedding)
    elif kind == "classification":
        value = head_classification(message.classification)
    elif kind == "prediction":
        value = token_prediction(message.prediction)
    elif kind == "answer":
        value = question_answer(message.answer)
    elif kind == "output":
        value = head_output(message.output)
    elif kind == "error":
        return HeadResult(head=head, error=errors.from_status(message.error))
    else:  # a newer server's kind of result: say so rather than guess
        error = errors.InternalError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"head {head!r} returned a kind of result this client cannot read: upgrade it",
        )
        return HeadResult(head=head, error=error)
    return HeadResult(head=head, value=value)


def run_heads_result(message: heads_pb2.RunHeadsResponse) -> RunHeadsResult:
    """:class:`RunHeadsResult` from ``RunHeadsResponse``."""
    heads = tuple(HeadRan(head=h.head, task=h.task) for h in message.heads)
    return RunHeadsResult(
        results=tuple(
            tuple(
                head_result(cell, heads[j].head if j < len(heads) else "")
                for j, cell in enumerate(per_item.heads)
            )
            for per_item in message.results
        ),
        heads=heads,
        usage=usage(message.usage),
        timing=timing(message.timing),
    )


def output_field(message: models_pb2.OutputField) -> OutputField:
    """:class:`OutputField` from its message; an unknown kind reads as ``"value"``."""
    kind: Literal["value", "tensor"] = (
        "tensor" if message.kind == models_pb2.OutputField.KIND_TENSOR else "value"
    )
    return OutputField(
        name=message.name,
        kind=kind,
        type=message.type,
        shape=message.shape,
        description=message.description,
        optional=message.optional,
    )


def parameter_info(message: models_pb2.ParameterInfo) -> ParameterInfo:
    """:class:`ParameterInfo` from its message: ``default`` decoded from JSON, empty: ``None``.

    A default that is not JSON is kept as its string rather than failing all of ``model_info``.
    """
    default: Any = None
    if message.default:
        try:
            default = json.loads(message.default)
        except ValueError:
            default = message.default
    return ParameterInfo(
        name=message.name,
        type=message.type,
        default=default,
        description=message.description,
        choices=tuple(message.choices),
    )


def head_info(h: models_pb2.HeadInfo) -> HeadInfo:
    """:class:`HeadInfo` from its message."""
    return HeadInfo(
        name=h.name,
        task=h.task,
        labels=tuple(h.labels),
        trained=h.trained,
        usable=h.usable,
        plugin=h.plugin,
        distribution=h.distribution,
        version=h.version,
        source=h.source,
        multi_label=h.multi_label,
        is_default=h.is_default,
        detail=h.detail,
        outputs=tuple(output_field(o) for o in h.outputs),
        parameters=tuple(parameter_info(p) for p in h.parameters),
        settings=dict(h.settings),
        head_version=h.head_version,
        shadow_of=h.shadow_of,
        shadow=shadow_info(h.shadow) if h.HasField("shadow") else None,
    )


def shadow_info(s: models_pb2.ShadowInfo) -> ShadowInfo:
    """:class:`ShadowInfo` from its message."""
    return ShadowInfo(
        fraction=s.fraction,
        calls=s.calls,
        items=s.items,
        failures=s.failures,
        skipped=s.skipped,
        top1_agreement=s.top1_agreement,
        mean_abs_probability_difference=s.mean_abs_probability_difference,
        mean_cosine=s.mean_cosine,
        exact_match=s.exact_match,
    )


def head_change(
    message: admin_pb2.LoadHeadResponse
    | admin_pb2.UnloadHeadResponse
    | admin_pb2.SetDefaultHeadResponse
    | admin_pb2.PromoteHeadResponse,
) -> HeadChange:
    """:class:`HeadChange` from an admin call's response."""
    return HeadChange(
        head=head_info(message.head),
        replaced_version=getattr(message, "replaced_version", ""),
        applied=message.applied,
    )


def model_info(message: models_pb2.ModelInfo) -> ModelInfo:
    """:class:`ModelInfo` from its message."""
    b = message.backbone
    return ModelInfo(
        backbone=BackboneInfo(
            source=b.source,
            model_type=b.model_type,
            hidden_size=b.hidden_size,
            num_layers=b.num_layers,
            vocab_size=b.vocab_size,
            max_length=b.max_length,
            device=b.device,
            dtype=b.dtype,
            parameters=b.parameters,
            mask_token=b.mask_token,
            load_seconds=b.load_seconds,
            kind=b.kind,
            modality=b.modality or "text",
            runtime=b.runtime,
            family=b.family,
            verified=b.verified,
            packing=b.packing,
            image=ImageInputInfo(
                height=b.image.height,
                width=b.image.width,
                preprocessing=b.image.preprocessing,
                mean=tuple(b.image.mean),
                std=tuple(b.image.std),
            )
            if b.HasField("image")
            else None,
        ),
        heads=tuple(head_info(h) for h in message.heads),
        failed_plugins=tuple(
            PluginFailure(plugin=f.plugin, reason=f.reason) for f in message.failed_plugins
        ),
        server_version=message.server_version,
        allow_untrained=message.allow_untrained,
        scheduler=SchedulerInfo(
            max_batch_tokens=message.scheduler.max_batch_tokens,
            max_batch_items=message.scheduler.max_batch_items,
            max_wait_ms=message.scheduler.max_wait_ms,
            max_queue_items=message.scheduler.max_queue_items,
            stream_in_flight_items=message.scheduler.stream_in_flight_items,
            torch_threads=message.scheduler.torch_threads,
            workers=message.scheduler.workers,
            long_call_tokens=message.scheduler.long_call_tokens,
            bulk_batch_tokens=message.scheduler.bulk_batch_tokens,
            feature_cache_bytes=message.scheduler.feature_cache_bytes,
        ),
        limits=RequestLimits(
            max_request_items=message.limits.max_request_items,
            max_item_chars=message.limits.max_item_chars,
            max_item_tokens=message.limits.max_item_tokens,
            max_message_bytes=message.limits.max_message_bytes,
            max_concurrent_calls=message.limits.max_concurrent_calls,
            max_streams=message.limits.max_streams,
            max_image_pixels=message.limits.max_image_pixels,
            max_image_decode_bytes=message.limits.max_image_decode_bytes,
            max_head_upload_bytes=message.limits.max_head_upload_bytes,
            max_document_tokens=message.limits.max_document_tokens,
        )
        if message.HasField("limits")
        else None,
    )


def tokenizations(message: models_pb2.TokenizeResponse) -> tuple[Tokenization, ...]:
    """One :class:`Tokenization` per item of a ``TokenizeResponse``."""
    return tuple(
        Tokenization(
            ids=tuple(t.ids),
            tokens=tuple(t.tokens),
            offsets=tuple(span(o) for o in t.offsets),
            token_type_ids=tuple(t.token_type_ids),
            sequence_ids=tuple(t.sequence_ids),
        )
        for t in message.results
    )


# --- stream responses ---------------------------------------------------------------------------


class StreamResponse(Protocol[R_co]):
    """What every ``*StreamResponse`` message looks like: an id and a oneof outcome."""

    @property
    def id(self) -> str: ...
    @property
    def response(self) -> R_co: ...
    @property
    def error(self) -> status_pb2.Status: ...
    def HasField(self, field_name: Any) -> bool: ...


def stream_result(message: StreamResponse[R], convert: Callable[[R], T]) -> StreamResult[T]:
    """A :class:`StreamResult`: the converted response, or the error its Status maps to."""
    if message.HasField("error"):
        return StreamResult(id=message.id, error=errors.from_status(message.error))
    return StreamResult(id=message.id, result=convert(message.response))


def encode_stream_result(
    message: encoder_pb2.EncodeStreamResponse,
) -> StreamResult[EncodeResult]:
    """:class:`StreamResult` of an ``EncodeStreamResponse``."""
    return stream_result(message, encode_result)


def predict_tokens_stream_result(
    message: token_predictor_pb2.PredictTokensStreamResponse,
) -> StreamResult[PredictTokensResult]:
    """:class:`StreamResult` of a ``PredictTokensStreamResponse``."""
    return stream_result(message, predict_tokens_result)


def classify_stream_result(
    message: classifier_pb2.ClassifyStreamResponse,
) -> StreamResult[ClassifyResult]:
    """:class:`StreamResult` of a ``ClassifyStreamResponse``."""
    return stream_result(message, classify_result)


def answer_question_stream_result(
    message: question_answerer_pb2.AnswerQuestionStreamResponse,
) -> StreamResult[AnswerQuestionResult]:
    """:class:`StreamResult` of an ``AnswerQuestionStreamResponse``."""
    return stream_result(message, answer_question_result)


def run_stream_result(message: heads_pb2.RunStreamResponse) -> StreamResult[RunResult]:
    """:class:`StreamResult` of a ``RunStreamResponse``."""
    return stream_result(message, run_result)


def run_heads_stream_result(
    message: heads_pb2.RunHeadsStreamResponse,
) -> StreamResult[RunHeadsResult]:
    """:class:`StreamResult` of a ``RunHeadsStreamResponse``."""
    return stream_result(message, run_heads_result)


def artifact_files(folder: os.PathLike[str]) -> list[admin_pb2.HeadFile]:
    """A head artifact folder's files, to upload (paths relative to it, hidden ones left)."""
    from pathlib import Path

    root = Path(folder)
    if not (root / "head.json").is_file():
        raise ValueError(f"{root}: not a head artifact (no head.json)")
    return [
        admin_pb2.HeadFile(path=path.relative_to(root).as_posix(), content=path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)
    ]
