"""Every call of the client, described once: which RPC, the request built from the method's
arguments, and how the response becomes the typed result.

``Client`` and ``AsyncClient`` hold the public signatures and their docs; each method's body
is one line that hands its arguments here and the description to its transport (a blocking
``grpc`` channel, or ``grpc.aio``), which only sends, retries and reads the request id.
``arguments(locals())`` passes a method's arguments on by name: a test holds every public
method's parameters equal to its description's.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from headserve.v1 import admin_pb2, jobs_pb2, models_pb2

from . import _convert, _jobs
from ._stubs import Stubs
from .types import (
    AnswerQuestionResult,
    Batch,
    ChunkBy,
    ChunkMode,
    ClassifyResult,
    EncodeResult,
    HeadChange,
    HeadSpec,
    Job,
    JobFile,
    LongText,
    ModelInfo,
    Pooling,
    PredictTokensResult,
    QuestionItem,
    RerankResult,
    RunHeadsResult,
    RunResult,
    StreamResult,
    TextItem,
    Tokenization,
    TruncationSide,
)

T = TypeVar("T")
B = TypeVar("B")
TRANSPORT_ARGUMENTS = ("self", "timeout")  # what the transport takes, not the description


def arguments(scope: Mapping[str, Any]) -> dict[str, Any]:
    """A public method's arguments (its ``locals()`` before anything else), but those of the
    transport."""
    return {name: value for name, value in scope.items() if name not in TRANSPORT_ARGUMENTS}


@dataclass(frozen=True, slots=True)
class Unary(Generic[T]):
    """A unary call: the RPC (picked from the stubs), its request, the response's result."""

    rpc: Callable[[Stubs], Any]
    request: object  # a message; an upload's: its messages, iterable again for each attempt
    convert: Callable[[Any], T]

    def sent(self) -> object:
        """What one attempt sends: the message, or an upload's messages from the start."""
        if isinstance(self.request, _jobs.UploadRequests):
            return iter(self.request)
        return self.request


@dataclass(frozen=True, slots=True)
class Stream(Generic[B, T]):
    """A stream: the RPC, the caller's batches and how each becomes a request, and each
    response's result."""

    rpc: Callable[[Stubs], Any]
    batches: Iterable[B] | AsyncIterable[B]
    to_request: Callable[[B], object]
    convert: Callable[[Any], StreamResult[T]]


# --- unary calls ------------------------------------------------------------------------------


def encode(
    *,
    items: Sequence[TextItem],
    pooling: Pooling | None,
    normalize: bool | None,
    truncate: bool,
    head: str | None,
    dimensions: int | None,
    prompt_name: str | None,
    prompt: str | None,
    truncation_side: TruncationSide | None,
    sparse_top_k: int | None,
    sparse_min_weight: float | None,
    chunk_mode: ChunkMode | None,
    chunk_tokens: int | None,
    chunk_overlap: int | None,
    chunk_by: ChunkBy | None,
) -> Unary[EncodeResult]:
    options = _convert.encode_options(
        pooling,
        normalize,
        truncate,
        head,
        dimensions,
        prompt_name,
        prompt,
        truncation_side,
        sparse_top_k,
        sparse_min_weight,
        chunk_mode,
        chunk_tokens,
        chunk_overlap,
        chunk_by,
    )
    request = _convert.encode_request(items, options)
    return Unary(lambda stubs: stubs.encoder.Encode, request, _convert.encode_result)


def predict_tokens(
    *,
    items: Sequence[TextItem],
    top_k: int | None,
    return_logits: bool,
    truncate: bool,
    head: str | None,
) -> Unary[PredictTokensResult]:
    options = _convert.predict_tokens_options(top_k, return_logits, truncate, head)
    return Unary(
        lambda stubs: stubs.token_predictor.PredictTokens,
        _convert.predict_tokens_request(items, options),
        _convert.predict_tokens_result,
    )


def classify(
    *,
    items: Sequence[TextItem],
    heads: str | Sequence[str],
    top_k: int,
    truncate: bool,
    long_text: LongText | None,
    chunk_tokens: int | None,
    chunk_overlap: int | None,
    chunk_by: ChunkBy | None,
    return_chunks: bool,
) -> Unary[ClassifyResult]:
    options = _convert.classify_options(
        heads, top_k, truncate, long_text, chunk_tokens, chunk_overlap, chunk_by, return_chunks
    )
    return Unary(
        lambda stubs: stubs.classifier.Classify,
        _convert.classify_request(items, options),
        _convert.classify_result,
    )


def rerank(
    *,
    query: str,
    documents: Sequence[str],
    head: str | None,
    top_n: int | None,
    return_documents: bool,
    truncate: bool,
) -> Unary[RerankResult]:
    request = _convert.rerank_request(query, documents, head, top_n, return_documents, truncate)
    return Unary(lambda stubs: stubs.ranker.Rerank, request, _convert.rerank_result)


def answer_question(
    *,
    items: Sequence[QuestionItem],
    top_k: int | None,
    max_answer_length: int | None,
    doc_stride: int | None,
    allow_no_answer: bool,
    head: str | None,
) -> Unary[AnswerQuestionResult]:
    options = _convert.answer_question_options(
        top_k, max_answer_length, doc_stride, allow_no_answer, head
    )
    return Unary(
        lambda stubs: stubs.question_answerer.AnswerQuestion,
        _convert.answer_question_request(items, options),
        _convert.answer_question_result,
    )


def run(
    *,
    head: str,
    items: Sequence[TextItem],
    options: Mapping[str, Any] | None,
    truncate: bool,
) -> Unary[RunResult]:
    request = _convert.run_request(items, head, _convert.run_options(options), truncate)
    return Unary(lambda stubs: stubs.heads.Run, request, _convert.run_result)


def run_heads(
    *, items: Sequence[TextItem], heads: Sequence[HeadSpec], truncate: bool
) -> Unary[RunHeadsResult]:
    request = _convert.run_heads_request(items, heads, truncate)
    return Unary(lambda stubs: stubs.heads.RunHeads, request, _convert.run_heads_result)


def model_info() -> Unary[ModelInfo]:
    return Unary(
        lambda stubs: stubs.models.GetModelInfo,
        models_pb2.GetModelInfoRequest(),
        _convert.model_info,
    )


def tokenize(
    *, items: Sequence[TextItem], add_special_tokens: bool, truncate: bool
) -> Unary[tuple[Tokenization, ...]]:
    request = _convert.tokenize_request(items, add_special_tokens, truncate)
    return Unary(lambda stubs: stubs.models.Tokenize, request, _convert.tokenizations)


# --- admin (HeadAdmin: the client's token must be an admin token) ----------------------------


def load_head(
    *,
    name: str,
    plugin: str | None,
    source: str | None,
    artifact: str | os.PathLike[str] | None,
    options: Mapping[str, str] | None,
    replace: bool,
    shadow_of: str | None,
    shadow_fraction: float | None,
) -> Unary[HeadChange]:
    files = _convert.artifact_files(Path(artifact)) if artifact is not None else ()
    request = admin_pb2.LoadHeadRequest(
        name=name,
        plugin=plugin or "",
        source=source or "",
        options=dict(options or {}),
        files=files,
        replace=replace,
        shadow_of=shadow_of or "",
        shadow_fraction=shadow_fraction or 0.0,
    )
    return Unary(lambda stubs: stubs.admin.LoadHead, request, _convert.head_change)


def unload_head(*, name: str) -> Unary[HeadChange]:
    request = admin_pb2.UnloadHeadRequest(name=name)
    return Unary(lambda stubs: stubs.admin.UnloadHead, request, _convert.head_change)


def promote_head(*, name: str) -> Unary[HeadChange]:
    request = admin_pb2.PromoteHeadRequest(name=name)
    return Unary(lambda stubs: stubs.admin.PromoteHead, request, _convert.head_change)


def set_default_head(*, name: str) -> Unary[HeadChange]:
    request = admin_pb2.SetDefaultHeadRequest(name=name)
    return Unary(lambda stubs: stubs.admin.SetDefaultHead, request, _convert.head_change)


# --- batch jobs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Download:
    """A file's bytes streamed from the server into ``destination``."""

    rpc: Callable[[Stubs], Any]
    request: object
    destination: str | os.PathLike[str]


def upload_job_file(*, path: str | os.PathLike[str], filename: str | None) -> Unary[JobFile]:
    requests = _jobs.UploadRequests(path, filename)
    return Unary(lambda stubs: stubs.jobs.UploadFile, requests, _jobs.job_file)


def get_job_file(*, file_id: str) -> Unary[JobFile]:
    request = jobs_pb2.GetFileRequest(file_id=file_id)
    return Unary(lambda stubs: stubs.jobs.GetFile, request, _jobs.job_file)


def list_job_files(*, purpose: str | None) -> Unary[tuple[JobFile, ...]]:
    request = jobs_pb2.ListFilesRequest(purpose=purpose or "")
    return Unary(lambda stubs: stubs.jobs.ListFiles, request, _jobs.job_files)


def delete_job_file(*, file_id: str) -> Unary[bool]:
    request = jobs_pb2.DeleteFileRequest(file_id=file_id)
    return Unary(lambda stubs: stubs.jobs.DeleteFile, request, lambda r: bool(r.deleted))


def download_job_file(*, file_id: str, destination: str | os.PathLike[str]) -> Download:
    request = jobs_pb2.DownloadFileRequest(file_id=file_id)
    return Download(lambda stubs: stubs.jobs.DownloadFile, request, destination)


def create_job(
    *, input_file_id: str, endpoint: str, metadata: Mapping[str, str] | None
) -> Unary[Job]:
    request = jobs_pb2.CreateJobRequest(
        input_file_id=input_file_id, endpoint=endpoint, metadata=dict(metadata or {})
    )
    return Unary(lambda stubs: stubs.jobs.CreateJob, request, _jobs.job)


def get_job(*, job_id: str) -> Unary[Job]:
    request = jobs_pb2.GetJobRequest(job_id=job_id)
    return Unary(lambda stubs: stubs.jobs.GetJob, request, _jobs.job)


def list_jobs(*, after: str | None, limit: int) -> Unary[tuple[Job, ...]]:
    request = jobs_pb2.ListJobsRequest(after=after or "", limit=limit)
    return Unary(lambda stubs: stubs.jobs.ListJobs, request, _jobs.jobs)


def cancel_job(*, job_id: str) -> Unary[Job]:
    request = jobs_pb2.CancelJobRequest(job_id=job_id)
    return Unary(lambda stubs: stubs.jobs.CancelJob, request, _jobs.job)


# --- streams ----------------------------------------------------------------------------------

Batches = Iterable[Batch[T]] | AsyncIterable[Batch[T]]


def encode_stream(
    *,
    batches: Batches[TextItem],
    pooling: Pooling | None,
    normalize: bool | None,
    truncate: bool,
    head: str | None,
    dimensions: int | None,
    prompt_name: str | None,
    prompt: str | None,
    truncation_side: TruncationSide | None,
    sparse_top_k: int | None,
    sparse_min_weight: float | None,
    chunk_mode: ChunkMode | None,
    chunk_tokens: int | None,
    chunk_overlap: int | None,
    chunk_by: ChunkBy | None,
) -> Stream[Batch[TextItem], EncodeResult]:
    options = _convert.encode_options(
        pooling,
        normalize,
        truncate,
        head,
        dimensions,
        prompt_name,
        prompt,
        truncation_side,
        sparse_top_k,
        sparse_min_weight,
        chunk_mode,
        chunk_tokens,
        chunk_overlap,
        chunk_by,
    )
    return Stream(
        lambda stubs: stubs.encoder.EncodeStream,
        batches,
        lambda batch: _convert.encode_request(batch.items, options, batch.id),
        _convert.encode_stream_result,
    )


def predict_tokens_stream(
    *,
    batches: Batches[TextItem],
    top_k: int | None,
    return_logits: bool,
    truncate: bool,
    head: str | None,
) -> Stream[Batch[TextItem], PredictTokensResult]:
    options = _convert.predict_tokens_options(top_k, return_logits, truncate, head)
    return Stream(
        lambda stubs: stubs.token_predictor.PredictTokensStream,
        batches,
        lambda batch: _convert.predict_tokens_request(batch.items, options, batch.id),
        _convert.predict_tokens_stream_result,
    )


def classify_stream(
    *,
    batches: Batches[TextItem],
    heads: str | Sequence[str],
    top_k: int,
    truncate: bool,
    long_text: LongText | None,
    chunk_tokens: int | None,
    chunk_overlap: int | None,
    chunk_by: ChunkBy | None,
    return_chunks: bool,
) -> Stream[Batch[TextItem], ClassifyResult]:
    options = _convert.classify_options(
        heads, top_k, truncate, long_text, chunk_tokens, chunk_overlap, chunk_by, return_chunks
    )
    return Stream(
        lambda stubs: stubs.classifier.ClassifyStream,
        batches,
        lambda batch: _convert.classify_request(batch.items, options, batch.id),
        _convert.classify_stream_result,
    )


def answer_question_stream(
    *,
    batches: Batches[QuestionItem],
    top_k: int | None,
    max_answer_length: int | None,
    doc_stride: int | None,
    allow_no_answer: bool,
    head: str | None,
) -> Stream[Batch[QuestionItem], AnswerQuestionResult]:
    options = _convert.answer_question_options(
        top_k, max_answer_length, doc_stride, allow_no_answer, head
    )
    return Stream(
        lambda stubs: stubs.question_answerer.AnswerQuestionStream,
        batches,
        lambda batch: _convert.answer_question_request(batch.items, options, batch.id),
        _convert.answer_question_stream_result,
    )


def run_stream(
    *,
    batches: Batches[TextItem],
    head: str,
    options: Mapping[str, Any] | None,
    truncate: bool,
) -> Stream[Batch[TextItem], RunResult]:
    struct = _convert.run_options(options)
    return Stream(
        lambda stubs: stubs.heads.RunStream,
        batches,
        lambda batch: _convert.run_request(batch.items, head, struct, truncate, batch.id),
        _convert.run_stream_result,
    )


def run_heads_stream(
    *, batches: Batches[TextItem], heads: Sequence[HeadSpec], truncate: bool
) -> Stream[Batch[TextItem], RunHeadsResult]:
    calls = [_convert.head_call(h, index) for index, h in enumerate(heads)]
    return Stream(
        lambda stubs: stubs.heads.RunHeadsStream,
        batches,
        lambda batch: _convert.run_heads_request(batch.items, (), truncate, batch.id, calls),
        _convert.run_heads_stream_result,
    )
