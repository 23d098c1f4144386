"""``AsyncClient``: the asyncio headserve client, over a ``grpc.aio.Channel``."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc

from headserve.v1 import models_pb2

from . import _convert, errors
from ._call_meta import outgoing, request_id_in, with_request_id
from ._options import NOT_GIVEN, Metadata, NotGiven, Settings, given, with_application
from ._retry import deadline_after, remaining, retry_delay
from ._stubs import Stubs
from ._tls import TLS, resolve
from .types import (
    AnswerQuestionResult,
    Batch,
    ClassifyResult,
    EncodeResult,
    HeadSpec,
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
R = TypeVar("R")
B = TypeVar("B")


class AsyncClient:
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
        metadata = with_application(metadata, application)
        self._settings = Settings.create(timeout, max_retries, metadata, token)
        security = resolve(tls)
        if channel is not None and (options or security is not None):
            raise ValueError(
                "options and tls configure the channel the client makes: not with channel="
            )
        if security is not None:
            options = [*options, *security.channel_options()]
        credentials = security.credentials() if security is not None else None
        self._channel = _LazyChannel(target, options, credentials, channel)

    @property
    def timeout(self) -> float | None:
        """Default deadline of a unary call in seconds, retries included."""
        return self._settings.timeout

    @property
    def max_retries(self) -> int:
        """How often a unary call is retried on UNAVAILABLE, overload or a proxy's INTERNAL."""
        return self._settings.max_retries

    @property
    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """Metadata sent with every call (besides the token's ``authorization`` entry)."""
        return self._settings.metadata

    def with_options(
        self,
        *,
        timeout: float | None | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        metadata: Metadata | NotGiven = NOT_GIVEN,
        token: str | None | NotGiven = NOT_GIVEN,
    ) -> AsyncClient:
        """A copy with other settings, sharing this client's channel; this one is unchanged.

        ``metadata`` replaces the client's metadata but keeps its token; ``token`` replaces
        the token (``None``: send none); see :meth:`Client.with_options`.
        """
        clone = copy.copy(self)
        clone._settings = self._settings.replace(timeout, max_retries, metadata, token)
        return clone

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
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> EncodeResult:
        """Embed each item (a text or a ``(text, text_pair)``); see :meth:`Client.encode`."""
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
        )
        request = _convert.encode_request(items, options)
        return await self._unary(
            lambda stubs: stubs.encoder.Encode, request, _convert.encode_result, timeout
        )

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
        options = _convert.predict_tokens_options(top_k, return_logits, truncate, head)
        request = _convert.predict_tokens_request(items, options)
        return await self._unary(
            lambda stubs: stubs.token_predictor.PredictTokens,
            request,
            _convert.predict_tokens_result,
            timeout,
        )

    async def classify(
        self,
        items: Sequence[TextItem],
        *,
        heads: str | Sequence[str] = (),
        top_k: int = 0,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> ClassifyResult:
        """Classify each item by one or more heads; see :meth:`Client.classify`."""
        options = _convert.classify_options(heads, top_k, truncate)
        request = _convert.classify_request(items, options)
        return await self._unary(
            lambda stubs: stubs.classifier.Classify, request, _convert.classify_result, timeout
        )

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
        request = _convert.rerank_request(query, documents, head, top_n, return_documents, truncate)
        return await self._unary(
            lambda stubs: stubs.ranker.Rerank, request, _convert.rerank_result, timeout
        )

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
        options = _convert.answer_question_options(
            top_k, max_answer_length, doc_stride, allow_no_answer, head
        )
        request = _convert.answer_question_request(items, options)
        return await self._unary(
            lambda stubs: stubs.question_answerer.AnswerQuestion,
            request,
            _convert.answer_question_result,
            timeout,
        )

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
        request = _convert.run_request(items, head, _convert.run_options(options), truncate)
        return await self._unary(
            lambda stubs: stubs.heads.Run, request, _convert.run_result, timeout
        )

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
        request = _convert.run_heads_request(items, heads, truncate)
        return await self._unary(
            lambda stubs: stubs.heads.RunHeads, request, _convert.run_heads_result, timeout
        )

    async def model_info(self, *, timeout: float | None | NotGiven = NOT_GIVEN) -> ModelInfo:
        """The backbone the server holds, its heads, and the plugins that failed to load."""
        return await self._unary(
            lambda stubs: stubs.models.GetModelInfo,
            models_pb2.GetModelInfoRequest(),
            _convert.model_info,
            timeout,
        )

    async def tokenize(
        self,
        items: Sequence[TextItem],
        *,
        add_special_tokens: bool = True,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> tuple[Tokenization, ...]:
        """How the server's tokenizer splits each item, with code-point offsets."""
        request = _convert.tokenize_request(items, add_special_tokens, truncate)
        return await self._unary(
            lambda stubs: stubs.models.Tokenize, request, _convert.tokenizations, timeout
        )

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
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[EncodeResult]]:
        """``encode`` over a stream of batches; see :meth:`Client.encode_stream`."""
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
        )
        return self._stream(
            lambda stubs: stubs.encoder.EncodeStream,
            batches,
            lambda batch: _convert.encode_request(batch.items, options, batch.id),
            _convert.encode_stream_result,
            timeout,
        )

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
        options = _convert.predict_tokens_options(top_k, return_logits, truncate, head)
        return self._stream(
            lambda stubs: stubs.token_predictor.PredictTokensStream,
            batches,
            lambda batch: _convert.predict_tokens_request(batch.items, options, batch.id),
            _convert.predict_tokens_stream_result,
            timeout,
        )

    def classify_stream(
        self,
        batches: Iterable[Batch[TextItem]] | AsyncIterable[Batch[TextItem]],
        *,
        heads: str | Sequence[str] = (),
        top_k: int = 0,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[ClassifyResult]]:
        """``classify`` over a stream of batches; see :meth:`Client.encode_stream`."""
        options = _convert.classify_options(heads, top_k, truncate)
        return self._stream(
            lambda stubs: stubs.classifier.ClassifyStream,
            batches,
            lambda batch: _convert.classify_request(batch.items, options, batch.id),
            _convert.classify_stream_result,
            timeout,
        )

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
        options = _convert.answer_question_options(
            top_k, max_answer_length, doc_stride, allow_no_answer, head
        )
        return self._stream(
            lambda stubs: stubs.question_answerer.AnswerQuestionStream,
            batches,
            lambda batch: _convert.answer_question_request(batch.items, options, batch.id),
            _convert.answer_question_stream_result,
            timeout,
        )

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
        struct = _convert.run_options(options)
        return self._stream(
            lambda stubs: stubs.heads.RunStream,
            batches,
            lambda batch: _convert.run_request(batch.items, head, struct, truncate, batch.id),
            _convert.run_stream_result,
            timeout,
        )

    def run_heads_stream(
        self,
        batches: Iterable[Batch[TextItem]] | AsyncIterable[Batch[TextItem]],
        heads: Sequence[HeadSpec],
        *,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult[RunHeadsResult]]:
        """``run_heads`` over a stream of batches; see :meth:`Client.run_heads_stream`."""
        calls = [_convert.head_call(h, index) for index, h in enumerate(heads)]
        return self._stream(
            lambda stubs: stubs.heads.RunHeadsStream,
            batches,
            lambda batch: _convert.run_heads_request(batch.items, (), truncate, batch.id, calls),
            _convert.run_heads_stream_result,
            timeout,
        )

    # --- transport ------------------------------------------------------------------------------

    async def _unary(
        self,
        pick: Callable[[Stubs], Callable[..., Awaitable[R]]],
        request: object,
        convert: Callable[[R], T],
        timeout: float | None | NotGiven,
    ) -> T:
        method = pick(self._channel.stubs())
        deadline = deadline_after(given(timeout, self._settings.timeout))
        attempt = 0
        while True:
            try:
                call = method(
                    request,
                    timeout=remaining(deadline),
                    metadata=outgoing(self._settings.call_metadata),
                )
                response = await call
                # a grpc.aio.UnaryUnaryCall, typed by `pick` as the Awaitable it also is
                request_id = request_id_in(await call.initial_metadata()) or request_id_in(  # type: ignore[attr-defined]
                    await call.trailing_metadata()  # type: ignore[attr-defined]
                )
            except grpc.RpcError as rpc_error:
                error = errors.from_rpc_error(rpc_error)
                delay = retry_delay(error, attempt, self._settings.max_retries, deadline)
                if delay is None:
                    raise error from rpc_error
                await asyncio.sleep(delay)
                attempt += 1
            else:
                return with_request_id(convert(response), request_id)

    async def _stream(
        self,
        pick: Callable[[Stubs], Callable[..., Any]],
        batches: Iterable[B] | AsyncIterable[B],
        to_request: Callable[[B], object],
        convert: Callable[[R], StreamResult[T]],
        timeout: float | None,
    ) -> AsyncIterator[StreamResult[T]]:
        pump = _AsyncRequestPump(batches, to_request)
        call = pick(self._channel.stubs())(
            pump.requests(), timeout=timeout, metadata=outgoing(self._settings.call_metadata)
        )
        request_id = None
        try:
            async for response in call:
                if request_id is None:  # the headers came before the first response
                    request_id = request_id_in(await call.initial_metadata())
                yield with_request_id(convert(response), request_id)
        except grpc.RpcError as rpc_error:
            raise errors.from_rpc_error(rpc_error) from rpc_error
        finally:
            call.cancel()  # no-op once finished; stops the call when the caller stops early
        if pump.error is not None:
            raise pump.error


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
