"""Typed Python client of a headserve server.

``Client`` blocks, ``AsyncClient`` is for asyncio; both have the same methods::

    from headserve.client import Client, Batch

    with Client("localhost:50051") as client:
        vectors = client.encode(["first text", "second text"], pooling="mean").vectors
        answer = client.answer_question([("Who?", "Ada wrote it.")])[0].best
        for outcome in client.classify_stream(Batch([t], id=str(i)) for i, t in enumerate(texts)):
            print(outcome.id, outcome.unwrap()[0].heads[0].top)
        entities = client.run("ner", ["Ada lives in London."])[0]["entities"]

Results are frozen dataclasses with numpy arrays; failures raise a :class:`HeadserveError`
subclass (see :mod:`headserve.client.errors`). ``tls=TLS(ca=..., cert=..., key=...)`` secures
the channel (mutual TLS with ``cert`` and ``key``), ``token=`` sends a bearer token with every
call. Only grpcio, protobuf and numpy are imported: a service that calls the server needs
neither torch nor transformers.
"""

from ._async import AsyncClient
from ._options import NOT_GIVEN, NotGiven
from ._sync import Client
from ._tls import TLS
from .errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    HeadserveError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .types import (
    Answer,
    AnswerQuestionHead,
    AnswerQuestionResult,
    BackboneInfo,
    Batch,
    Classification,
    ClassifyHead,
    ClassifyResult,
    Embedding,
    EncodeHead,
    EncodeResult,
    GenericHead,
    HeadClassification,
    HeadInfo,
    HeadOutput,
    HeadRan,
    HeadResult,
    HeadSpec,
    HeadValue,
    ImageInputInfo,
    LabelScore,
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

__all__ = [
    "NOT_GIVEN",
    "AnswerQuestionHead",
    "ClassifyHead",
    "EncodeHead",
    "GenericHead",
    "HeadRan",
    "HeadResult",
    "HeadSpec",
    "HeadValue",
    "PredictTokensHead",
    "RunHeadsResult",
    "Answer",
    "AnswerQuestionResult",
    "AsyncClient",
    "BackboneInfo",
    "Batch",
    "Classification",
    "ClassifyResult",
    "Client",
    "DeadlineExceededError",
    "Embedding",
    "EncodeResult",
    "FailedPreconditionError",
    "FieldViolation",
    "HeadClassification",
    "HeadInfo",
    "ImageInputInfo",
    "HeadOutput",
    "HeadserveError",
    "InternalError",
    "InvalidArgumentError",
    "LabelScore",
    "MaskPrediction",
    "ModelInfo",
    "SchedulerInfo",
    "NotFoundError",
    "NotGiven",
    "OutputField",
    "ParameterInfo",
    "PermissionDeniedError",
    "PluginFailure",
    "Pooling",
    "SparseVector",
    "RankedDocument",
    "RerankResult",
    "TruncationSide",
    "PredictTokensResult",
    "QuestionAnswer",
    "QuestionContext",
    "QuestionItem",
    "ResourceExhaustedError",
    "RequestLimits",
    "RunResult",
    "Span",
    "StreamResult",
    "TLS",
    "TextItem",
    "Timing",
    "TokenCandidate",
    "TokenPrediction",
    "Tokenization",
    "UnauthenticatedError",
    "UnavailableError",
    "Usage",
]
