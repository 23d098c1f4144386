"""``AsyncClient``: the asyncio headserve client, over a ``grpc.aio.Channel``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc

from . import _calls, _jobs
from ._base import ClientBase, streaming
from ._call_meta import head_versions_in, outgoing, request_id_in, with_request_id
from ._calls import arguments
from ._options import NOT_GIVEN, Metadata, NotGiven, given
from ._retry import Attempts
from ._stubs import Stubs
from ._tls import TLS
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

__all__ = ["AsyncClient"]

T = TypeVar("T")
B = TypeVar("B")


class AsyncClient(ClientBase):
    """asyncio client of a headserve server: the methods of :class:`Client`, awaited.

    Example::

        async with AsyncClient("localhost:50051") as client:
            result = await client.encode(["a sentence"])
            async for outcome in client.encode_stream(batches):
                embeddings = outcome.unwrap()

    The channel is made on the first call, so the client may be built outside the event loop;
    it then belongs to the loop of that first call. Arguments are those of :class:`Client`
    (``tls``, ``token``, ``application`` included); ``channel`` must be a
    ``grpc.aio.Channel``. TLS files are read when the client is made.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = 30.0,
        max_retries: int = 2,
        channel: grpc.aio.Channel | None = None,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        tls: TLS | bool | None = None,
        token: str | None = None,
        application: str | None = None,
    ) -> None:
        security = self._configure(locals())
        if security is not None:
            options = [*options, *security.channel_options()]
        credentials = security.credentials() if security is not None else None
        self._channel = _LazyChannel(target, options, credentials, channel)

    async def close(self) -> None:
        """Close the channel, for this client and every ``with_options`` copy of it."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- unary calls ----------------------------------------------------------------------------

    async def encode(
        self,
        items: Sequence[TextItem],
        *,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        truncate: bool = False,
        head: str | None = None,
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
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> EncodeResult:
        """Embed each item (a text or a ``(text, text_pair)``); see :meth:`Client.encode`."""
        return await self._unary(_calls.encode(**arguments(locals())), timeout)

    async def predict_tokens(
        self,
        items: Sequence[TextItem],
        *,
        top_k: int | None = None,
        return_logits: bool = False,
        truncate: bool = False,
        head: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> PredictTokensResult:
        """Candidates for every mask token in each item; see :meth:`Client.predict_tokens`."""
        return await self._unary(_calls.predict_tokens(**arguments(locals())), timeout)

    async def classify(
        self,
        items: Sequence[TextItem],
        *,
        heads: str | Sequence[str] = (),
        top_k: int = 0,
        truncate: bool = False,
        long_text: LongText | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        chunk_by: ChunkBy | None = None,
        return_chunks: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> ClassifyResult:
        """Classify each item by one or more heads; see :meth:`Client.classify`."""
        return await self._unary(_calls.classify(**arguments(locals())), timeout)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        head: str | None = None,
        top_n: int | None = None,
        return_documents: bool = False,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> RerankResult:
        """``documents`` ordered by relevance to ``query``; see :meth:`Client.rerank`."""
        return await self._unary(_calls.rerank(**arguments(locals())), timeout)

    async def answer_question(
        self,
        items: Sequence[QuestionItem],
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        doc_stride: int | None = None,
        allow_no_answer: bool = False,
        head: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> AnswerQuestionResult:
        """Extract answers from each question's context; see :meth:`Client.answer_question`."""
        return await self._unary(_calls.answer_question(**arguments(locals())), timeout)

    async def run(
        self,
        head: str,
        items: Sequence[TextItem],
        *,
        options: Mapping[str, Any] | None = None,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> RunResult:
        """Run the head called ``head`` on each item; see :meth:`Client.run`.

        Example::

            result = await client.run("ner", ["Ada lives in London."])
            entities = result[0]["entities"]
        """
        return await self._unary(_calls.run(**arguments(locals())), timeout)

    async def run_heads(
        self,
        items: Sequence[TextItem],
        heads: Sequence[HeadSpec],
        *,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> RunHeadsResult:
        """Several heads of any tasks on the same items, one backbone pass; see
        :meth:`Client.run_heads`."""
        return await self._unary(_calls.run_heads(**arguments(locals())), timeout)

    async def model_info(self, *, timeout: float | None | NotGiven = NOT_GIVEN) -> ModelInfo:
        """The backbone the server holds, its heads, and the plugins that failed to load."""
        return await self._unary(_calls.model_info(**arguments(locals())), timeout)

    async def tokenize(
        self,
        items: Sequence[TextItem],
        *,
        add_special_tokens: bool = True,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> tuple[Tokenization, ...]:
        """How the server's tokenizer splits each item, with code-point offsets."""
        return await self._unary(_calls.tokenize(**arguments(locals())), timeout)

    # --- admin: heads changed while the server runs (an admin token) -----------------------------

    async def load_head(
        self,
        name: str,
        *,
        plugin: str | None = None,
        source: str | None = None,
        artifact: str | os.PathLike[str] | None = None,
        options: Mapping[str, str] | None = None,
        replace: bool = False,
        shadow_of: str | None = None,
        shadow_fraction: float | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> HeadChange:
        """Load a head into the running server; see :meth:`Client.load_head`."""
        return await self._unary(_calls.load_head(**arguments(locals())), timeout)

    async def unload_head(
        self, name: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> HeadChange:
        """Stop serving head ``name``; see :meth:`Client.unload_head`."""
        return await self._unary(_calls.unload_head(**arguments(locals())), timeout)

    async def promote_head(
        self, name: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> HeadChange:
        """Put shadow head ``name`` in place of the head it shadows; see
        :meth:`Client.promote_head`."""
        return await self._unary(_calls.promote_head(**arguments(locals())), timeout)

    async def set_default_head(
        self, name: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> HeadChange:
        """Make head ``name`` the default of its task; see :meth:`Client.set_default_head`."""
        return await self._unary(_calls.set_default_head(**arguments(locals())), timeout)

    # --- batch jobs (a server started with --jobs-dir) ------------------------------------------

    async def upload_job_file(
        self,
        path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> JobFile:
        """Upload a batch job's input: a JSONL file, one request a line, in OpenAI's Batch
        input format (``custom_id``, ``method``, ``url``, ``body``; the url ``/v1/embeddings``,
        ``/v1/rerank`` or a headserve RPC's full method name, with its request in proto3 JSON).

        A file that is not UTF-8 JSONL, or has a line naming a url the server does not answer,
        is refused whole, as is one larger than the server's ``--max-job-bytes``
        (:class:`InvalidArgumentError`, field ``file``, naming the line or the limit). Sent in
        chunks; retried as a unary call is (the file is read again).
        """
        return await self._unary(_calls.upload_job_file(**arguments(locals())), timeout)

    async def get_job_file(
        self, file_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> JobFile:
        """A file the server keeps: an upload, or a finished job's output or error file."""
        return await self._unary(_calls.get_job_file(**arguments(locals())), timeout)

    async def list_job_files(
        self, *, purpose: str | None = None, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> tuple[JobFile, ...]:
        """The files the server keeps, oldest first (``purpose``: ``"batch"`` uploads, or
        ``"batch_output"``)."""
        return await self._unary(_calls.list_job_files(**arguments(locals())), timeout)

    async def delete_job_file(
        self, file_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> bool:
        """Delete a file no unfinished job reads or writes."""
        return await self._unary(_calls.delete_job_file(**arguments(locals())), timeout)

    async def download_job_file(
        self,
        file_id: str,
        destination: str | os.PathLike[str],
        *,
        timeout: float | None = None,
    ) -> Path:
        """Write a file's bytes (e.g. a finished job's ``output_file_id``) to
        ``destination``, whole or not at all (it is written beside, then moved in place).
        A stream: no deadline unless ``timeout`` is given, never retried."""
        return await self._download(_calls.download_job_file(**arguments(locals())), timeout)

    async def create_job(
        self,
        input_file_id: str,
        endpoint: str,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> Job:
        """Create a batch job over an uploaded file; every line's url is ``endpoint``. Its
        lines run as bulk work, after the jobs created before it; :meth:`get_job` shows its
        progress."""
        return await self._unary(_calls.create_job(**arguments(locals())), timeout)

    async def get_job(self, job_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN) -> Job:
        """A batch job: its status and progress."""
        return await self._unary(_calls.get_job(**arguments(locals())), timeout)

    async def list_jobs(
        self,
        *,
        after: str | None = None,
        limit: int = 20,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> tuple[Job, ...]:
        """Batch jobs, newest first, at most ``limit`` (1 to 100); the next page with
        ``after`` = the last one's id."""
        return await self._unary(_calls.list_jobs(**arguments(locals())), timeout)

    async def cancel_job(self, job_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN) -> Job:
        """Stop a job after the lines being answered now; what was answered stays in its
        files."""
        return await self._unary(_calls.cancel_job(**arguments(locals())), timeout)

    # --- streams --------------------------------------------------------------------------------

    def encode_stream(
        self,
        batches: Iterable[Batch[TextItem]] | AsyncIterable[Batch[TextItem]],
        *,
        pooling: Pooling | None = None,
        normalize: bool | None = None,
        truncate: bool = False,
        head: str | None = None,
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
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[EncodeResult]]:
        """``encode`` over a stream of batches; see :meth:`Client.encode_stream`."""
        return self._stream(_calls.encode_stream(**arguments(locals())), timeout)

    def predict_tokens_stream(
        self,
        batches: Iterable[Batch[TextItem]] | AsyncIterable[Batch[TextItem]],
        *,
        top_k: int | None = None,
        return_logits: bool = False,
        truncate: bool = False,
        head: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[PredictTokensResult]]:
        """``predict_tokens`` over a stream of batches; see :meth:`Client.encode_stream`."""
        return self._stream(_calls.predict_tokens_stream(**arguments(locals())), timeout)

    def classify_stream(
        self,
        batches: Iterable[Batch[TextItem]] | AsyncIterable[Batch[TextItem]],
        *,
        heads: str | Sequence[str] = (),
        top_k: int = 0,
        truncate: bool = False,
        long_text: LongText | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        chunk_by: ChunkBy | None = None,
        return_chunks: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[ClassifyResult]]:
        """``classify`` over a stream of batches; see :meth:`Client.encode_stream`."""
        return self._stream(_calls.classify_stream(**arguments(locals())), timeout)

    def answer_question_stream(
        self,
        batches: Iterable[Batch[QuestionItem]] | AsyncIterable[Batch[QuestionItem]],
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        doc_stride: int | None = None,
        allow_no_answer: bool = False,
        head: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[AnswerQuestionResult]]:
        """``answer_question`` over a stream of batches; see :meth:`Client.encode_stream`."""
        return self._stream(_calls.answer_question_stream(**arguments(locals())), timeout)

    def run_stream(
        self,
        batches: Iterable[Batch[TextItem]] | AsyncIterable[Batch[TextItem]],
        *,
        head: str,
        options: Mapping[str, Any] | None = None,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[RunResult]]:
        """``run`` over a stream of batches; see :meth:`Client.run_stream`."""
        return self._stream(_calls.run_stream(**arguments(locals())), timeout)

    def run_heads_stream(
        self,
        batches: Iterable[Batch[TextItem]] | AsyncIterable[Batch[TextItem]],
        heads: Sequence[HeadSpec],
        *,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[RunHeadsResult]]:
        """``run_heads`` over a stream of batches; see :meth:`Client.run_heads_stream`."""
        return self._stream(_calls.run_heads_stream(**arguments(locals())), timeout)

    # --- transport ------------------------------------------------------------------------------

    async def _unary(self, call: _calls.Unary[T], timeout: float | None | NotGiven) -> T:
        method = call.rpc(self._channel.stubs())
        attempts = Attempts(given(timeout, self._settings.timeout), self._settings.max_retries)
        while True:
            try:
                # a grpc.aio.UnaryUnaryCall: awaited for its response, then its metadata
                rpc = method(
                    call.sent(),
                    timeout=attempts.remaining(),
                    metadata=outgoing(self._settings.call_metadata),
                )
                response = await rpc
                trailing = await rpc.trailing_metadata()
                request_id = request_id_in(await rpc.initial_metadata()) or request_id_in(trailing)
            except grpc.RpcError as rpc_error:
                await asyncio.sleep(attempts.after(rpc_error))
            else:
                versions = head_versions_in(trailing)
                return with_request_id(call.convert(response), request_id, versions)

    async def _stream(
        self, call: _calls.Stream[Any, T], timeout: float | None
    ) -> AsyncIterator[StreamResult[T]]:
        pump = _AsyncRequestPump(call.batches, call.to_request)
        rpc = call.rpc(self._channel.stubs())(
            pump.requests(), timeout=timeout, metadata=outgoing(self._settings.call_metadata)
        )
        request_id = None
        with streaming(rpc, pump):
            async for response in rpc:
                if request_id is None:  # the headers came before the first response
                    request_id = request_id_in(await rpc.initial_metadata())
                yield with_request_id(call.convert(response), request_id)

    async def _download(self, call: _calls.Download, timeout: float | None) -> Path:
        with _jobs.Download(call.destination) as target:
            rpc = call.rpc(self._channel.stubs())(
                call.request, timeout=timeout, metadata=outgoing(self._settings.call_metadata)
            )
            async for response in rpc:
                target.add(response)
        return target.destination


class _LazyChannel:
    """The channel of an ``AsyncClient`` and its copies, made inside the loop of the first call.

    A ``grpc.aio`` channel binds to the event loop current when it is made; making it on first
    use lets the client be built anywhere (module level, an app factory).
    """

    def __init__(
        self,
        target: str,
        options: Sequence[tuple[str, Any]],
        credentials: grpc.ChannelCredentials | None,
        channel: grpc.aio.Channel | None,
    ) -> None:
        self._target = target
        self._options = list(options)
        self._credentials = credentials
        self._channel = channel
        self._stubs = Stubs.over(channel) if channel is not None else None
        self._closed = False

    def stubs(self) -> Stubs:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._stubs is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self._target, self._credentials, options=self._options
                )
            self._stubs = Stubs.over(self._channel)
        return self._stubs

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            await self._channel.close()


class _AsyncRequestPump(Generic[B]):
    """Batches to requests for ``grpc.aio``; like the sync pump, it keeps a failure for the
    caller instead of letting gRPC swallow it into a cancelled call."""

    def __init__(
        self, batches: Iterable[B] | AsyncIterable[B], to_request: Callable[[B], object]
    ) -> None:
        self._batches = batches
        self._to_request = to_request
        self.error: Exception | None = None

    async def requests(self) -> AsyncIterator[object]:
        try:
            if isinstance(self._batches, AsyncIterable):
                async for batch in self._batches:
                    yield self._to_request(batch)
            else:
                for batch in self._batches:
                    yield self._to_request(batch)
        except Exception as error:  # handed to the caller by AsyncClient._stream
            self.error = error
