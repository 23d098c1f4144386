"""``Client``: the blocking headserve client, over a ``grpc.Channel``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

__all__ = ["Client"]

T = TypeVar("T")
B = TypeVar("B")


class Client(ClientBase):
    """Blocking client of a headserve server. Thread-safe; one per process is plenty.

    Example::

        with Client("localhost:50051") as client:
            result = client.encode(["a sentence", ("a text", "its pair")])
            result.vectors  # float32, shape [2, hidden_size]

        # TLS against a private CA, with a bearer token on every call:
        Client("models.internal:443", tls=TLS(ca="ca.pem"), token=os.environ["HEADSERVE_TOKEN"])

    Args:
        target: ``host:port`` of the server (ignored when ``channel`` is given).
        timeout: seconds a unary call may take, retries included; ``None``: no limit.
            Streams take no deadline unless a call passes one.
        max_retries: how often a unary call is retried on UNAVAILABLE, on overload, or on
            an INTERNAL that a proxy sent (not headserve: its replica died under the call),
            with capped exponential backoff and jitter. Streams are never retried, nor is
            any other failure (UNAUTHENTICATED and PERMISSION_DENIED included).
        channel: a ``grpc.Channel`` to use (e.g. one with other credentials); it is closed by
            ``close()``.
        metadata: ``(key, value)`` pairs sent with every call (e.g. a tenant header).
        options: gRPC channel options for the channel the client makes, e.g.
            ``[("grpc.max_receive_message_length", 64 << 20)]``.
        tls: secure the channel the client makes: a :class:`TLS`, or ``True`` for TLS with
            the default roots; ``None`` or ``False``: plaintext.
        token: a bearer token, sent as ``authorization: Bearer <token>`` with every call,
            unary or stream, retries included. It is kept apart from ``metadata`` (which must
            then carry no ``authorization`` entry), works over plaintext too (e.g. behind a
            TLS-terminating proxy), and never appears in a ``repr`` or an error message.
            Printable ASCII only: a newline or control character is a ``ValueError``.
        application: on a Ray Serve endpoint serving several backbones, the application to
            call (sent as ``application`` metadata with every call); ``None``: the only one.

    Calls raise a :class:`~headserve.client.HeadserveError` subclass on failure.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = 30.0,
        max_retries: int = 2,
        channel: grpc.Channel | None = None,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        tls: TLS | bool | None = None,
        token: str | None = None,
        application: str | None = None,
    ) -> None:
        security = self._configure(locals())
        if channel is not None:
            self._channel = channel
        elif security is None:
            self._channel = grpc.insecure_channel(target, options=list(options))
        else:
            self._channel = grpc.secure_channel(
                target,
                security.credentials(),
                options=[*options, *security.channel_options()],
            )
        self._stubs = Stubs.over(self._channel)

    def close(self) -> None:
        """Close the channel, for this client and every ``with_options`` copy of it."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- unary calls ----------------------------------------------------------------------------

    def encode(
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
        """Embed each item (a text or a ``(text, text_pair)``), one result per item, in order.

        Args:
            pooling: ``"cls"``, ``"mean"``, ``"none"`` (per-token states) or ``None`` for the
                head's default.
            normalize: L2-normalise pooled vectors; ``None``: the head's default.
            truncate: cut inputs longer than the model's window instead of refusing them.
            head: encode head to use; ``None``: the server's default.
            dimensions: keep each pooled vector's first N values (Matryoshka), then normalise
                them if ``normalize`` is true; ``None``: all.
            prompt_name: a prompt the head's checkpoint names (``"query"``), put before every
                text; ``None``: the server's default prompt, if any.
            prompt: a prompt written out (``"query: "``); ``""`` for none. Not with
                ``prompt_name``.
            truncation_side: which end ``truncate`` cuts, ``"right"`` (default) or ``"left"``.
            sparse_top_k: a sparse head's heaviest terms to keep; ``None``: all (over
                ``sparse_min_weight``). Results carry ``Embedding.sparse``.
            sparse_min_weight: a sparse head's terms must weigh more than this.
            chunk_mode: read texts longer than a chunk in chunks: ``"independent"`` (each
                chunk encoded on its own) or ``"late"`` (late chunking: the whole text read in
                windows, each chunk pooled from the window around it). Each embedding then
                carries ``chunks``, and its ``vector`` is the text's. ``None``: no chunks.
            chunk_tokens: at most this many tokens a chunk; ``None``: the server's default.
            chunk_overlap: tokens a chunk shares with the one before it.
            chunk_by: ``"tokens"`` (default) or ``"sentences"`` (cut at sentence boundaries).
            timeout: overrides the client's timeout for this call.
        """
        return self._unary(_calls.encode(**arguments(locals())), timeout)

    def predict_tokens(
        self,
        items: Sequence[TextItem],
        *,
        top_k: int | None = None,
        return_logits: bool = False,
        truncate: bool = False,
        head: str | None = None,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> PredictTokensResult:
        """Candidates for every mask token in each item (``ModelInfo.backbone.mask_token``).

        Args:
            top_k: candidates per mask, best first; ``None``: the server's default (5).
            return_logits: also return each item's logits, shape ``[tokens, vocab_size]``.
            truncate: cut inputs longer than the model's window instead of refusing them.
            head: masked-LM head to use; ``None``: the server's default.
            timeout: overrides the client's timeout for this call.
        """
        return self._unary(_calls.predict_tokens(**arguments(locals())), timeout)

    def classify(
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
        """Classify each item by one or more heads (one backbone pass serves them all).

        Args:
            heads: classifier head names, applied in this order; empty: the server's default.
            top_k: labels per head, best first; 0: all labels.
            truncate: cut inputs longer than the model's window instead of refusing them.
            long_text: classify a text longer than a chunk in chunks, each on its own:
                ``"mean"`` (the text's logits are the chunks' mean), ``"max"`` (each label's
                largest) or ``"first"`` (the first chunk alone). ``None``: one row.
            chunk_tokens: at most this many tokens a chunk; ``None``: as many as fit.
            chunk_overlap: tokens a chunk shares with the one before it.
            chunk_by: ``"tokens"`` (default) or ``"sentences"`` (cut at sentence boundaries).
            return_chunks: also return each chunk's labels and where it lies in the text
                (``HeadClassification.chunks``).
            timeout: overrides the client's timeout for this call.
        """
        return self._unary(_calls.classify(**arguments(locals())), timeout)

    def rerank(
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
        """``documents`` ordered by relevance to ``query``, best first, each with its index.

        Args:
            head: the head that scores: a classify head as a cross-encoder of (query,
                document) pairs, or an encode head by cosine; ``None``: the server's default.
            top_n: keep the ``top_n`` best; ``None``: all.
            return_documents: each result carries its document's text.
            truncate: cut inputs longer than the model's window instead of refusing them.
            timeout: overrides the client's timeout for this call.
        """
        return self._unary(_calls.rerank(**arguments(locals())), timeout)

    def answer_question(
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
        """Extract answers from each ``(question, context)`` or ``QuestionContext``.

        Args:
            top_k: answers per item, best first; ``None``: the server's default (1).
            max_answer_length: longest answer, in tokens; ``None``: the server's default (30).
            doc_stride: overlap in tokens of the windows a long context is split into;
                ``None``: the server's default (128).
            allow_no_answer: let "no answer" win when the head scores it above every span.
            head: QA head to use; ``None``: the server's default.
            timeout: overrides the client's timeout for this call.
        """
        return self._unary(_calls.answer_question(**arguments(locals())), timeout)

    def run(
        self,
        head: str,
        items: Sequence[TextItem],
        *,
        options: Mapping[str, Any] | None = None,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> RunResult:
        """Run the head called ``head`` on each item (a text or a ``(text, text_pair)``).

        This is the way in for heads of any task beyond the four built-in methods (token
        classification, similarity, tagging...). Each item gets a :class:`HeadOutput` with the
        fields and tensors of the head's output schema; ``model_info().head(name).outputs``
        lists them, and ``.parameters`` the options the head takes.

        Example::

            result = client.run("ner", ["Ada lives in London."], options={"threshold": 0.5})
            result.task  # e.g. "token_classification"
            for entity in result[0]["entities"]:
                print(entity["label"], entity["score"])

        Args:
            head: the head to run, by name (required).
            options: the head's own options, by the names in ``HeadInfo.parameters``: JSON
                values (numbers travel as doubles; a head takes ``3.0`` for an integer 3).
                ``None``: the head's defaults.
            truncate: cut inputs longer than the model's window instead of refusing them.
            timeout: overrides the client's timeout for this call.
        """
        return self._unary(_calls.run(**arguments(locals())), timeout)

    def run_heads(
        self,
        items: Sequence[TextItem],
        heads: Sequence[HeadSpec],
        *,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> RunHeadsResult:
        """Run several heads, of any tasks, on the same items: the backbone reads each item
        once for all of them. Per item, one :class:`HeadResult` per head, in order; a head
        that refuses an item (or its options) gets its own error there, and the other heads'
        results stand.

        Example::

            result = client.run_heads(
                ["Ada lives in London."],
                [EncodeHead("encode", dimensions=64), "sentiment", GenericHead("ner")],
            )
            vector = result[0][0].unwrap_as(Embedding).vector
            label = result[0][1].unwrap_as(HeadClassification).top
            entities = result[0][2].unwrap_as(HeadOutput)["entities"]

        Args:
            items: texts or ``(text, text_pair)`` pairs; a question-answering head reads a
                pair as ``(question, context)``.
            heads: each a head's name (its task's default options) or an
                :class:`EncodeHead`, :class:`ClassifyHead`, :class:`PredictTokensHead`,
                :class:`AnswerQuestionHead` or :class:`GenericHead` with its options.
            truncate: cut inputs longer than the model's window, for every head.
            timeout: overrides the client's timeout for this call.
        """
        return self._unary(_calls.run_heads(**arguments(locals())), timeout)

    def model_info(self, *, timeout: float | None | NotGiven = NOT_GIVEN) -> ModelInfo:
        """The backbone the server holds, its heads, and the plugins that failed to load."""
        return self._unary(_calls.model_info(**arguments(locals())), timeout)

    def tokenize(
        self,
        items: Sequence[TextItem],
        *,
        add_special_tokens: bool = True,
        truncate: bool = False,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> tuple[Tokenization, ...]:
        """How the server's tokenizer splits each item, with code-point offsets."""
        return self._unary(_calls.tokenize(**arguments(locals())), timeout)

    # --- admin: heads changed while the server runs (an admin token) -----------------------------

    def load_head(
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
        """Load a head into the running server, on its backbone (an admin call: the client's
        token must be one of the server's admin tokens).

        Args:
            name: the head's name in calls.
            plugin: the plugin that loads it (``None`` for a head artifact, which names its own).
            source: a folder the *server* can read (a task checkpoint or a head artifact);
                ``None``: the backbone's own folder, or ``artifact``.
            artifact: a head artifact folder on *this* machine (``headserve train-head``'s
                output), whose files are sent in the call.
            options: the head's options, as ``serve --head NAME=PLUGIN,key=value``.
            replace: replace the served head of this name, atomically; calls already
                accepted finish on the old one.
            shadow_of: load it as a shadow of this live head: it runs beside it on a
                ``shadow_fraction`` of its calls (default all), its results compared with
                the live head's (``model_info()``: the shadow's ``HeadInfo.shadow``), never
                returned; :meth:`promote_head` makes it the live head.
        """
        return self._unary(_calls.load_head(**arguments(locals())), timeout)

    def unload_head(self, name: str, *, timeout: float | None | NotGiven = NOT_GIVEN) -> HeadChange:
        """Stop serving head ``name`` (an admin call); calls already accepted finish on it."""
        return self._unary(_calls.unload_head(**arguments(locals())), timeout)

    def promote_head(
        self, name: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> HeadChange:
        """Put shadow head ``name`` in place of the head it shadows, under that head's name
        (an admin call)."""
        return self._unary(_calls.promote_head(**arguments(locals())), timeout)

    def set_default_head(
        self, name: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> HeadChange:
        """Make head ``name`` the default of its task (an admin call)."""
        return self._unary(_calls.set_default_head(**arguments(locals())), timeout)

    # --- batch jobs (a server started with --jobs-dir) ------------------------------------------

    def upload_job_file(
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
        return self._unary(_calls.upload_job_file(**arguments(locals())), timeout)

    def get_job_file(
        self, file_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> JobFile:
        """A file the server keeps: an upload, or a finished job's output or error file."""
        return self._unary(_calls.get_job_file(**arguments(locals())), timeout)

    def list_job_files(
        self, *, purpose: str | None = None, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> tuple[JobFile, ...]:
        """The files the server keeps, oldest first (``purpose``: ``"batch"`` uploads, or
        ``"batch_output"``)."""
        return self._unary(_calls.list_job_files(**arguments(locals())), timeout)

    def delete_job_file(
        self, file_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN
    ) -> bool:
        """Delete a file no unfinished job reads or writes."""
        return self._unary(_calls.delete_job_file(**arguments(locals())), timeout)

    def download_job_file(
        self,
        file_id: str,
        destination: str | os.PathLike[str],
        *,
        timeout: float | None = None,
    ) -> Path:
        """Write a file's bytes (e.g. a finished job's ``output_file_id``) to
        ``destination``, whole or not at all (it is written beside, then moved in place).
        A stream: no deadline unless ``timeout`` is given, never retried."""
        return self._download(_calls.download_job_file(**arguments(locals())), timeout)

    def create_job(
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
        return self._unary(_calls.create_job(**arguments(locals())), timeout)

    def get_job(self, job_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN) -> Job:
        """A batch job: its status and progress."""
        return self._unary(_calls.get_job(**arguments(locals())), timeout)

    def list_jobs(
        self,
        *,
        after: str | None = None,
        limit: int = 20,
        timeout: float | None | NotGiven = NOT_GIVEN,
    ) -> tuple[Job, ...]:
        """Batch jobs, newest first, at most ``limit`` (1 to 100); the next page with
        ``after`` = the last one's id."""
        return self._unary(_calls.list_jobs(**arguments(locals())), timeout)

    def cancel_job(self, job_id: str, *, timeout: float | None | NotGiven = NOT_GIVEN) -> Job:
        """Stop a job after the lines being answered now; what was answered stays in its
        files."""
        return self._unary(_calls.cancel_job(**arguments(locals())), timeout)

    # --- streams --------------------------------------------------------------------------------

    def encode_stream(
        self,
        batches: Iterable[Batch[TextItem]],
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
    ) -> Iterator[StreamResult[EncodeResult]]:
        """``encode`` over a stream of batches: one :class:`StreamResult` per batch.

        Batches are sent as the iterator is consumed; a failed batch yields a result whose
        ``error`` is set and the stream goes on. The options apply to every batch. ``timeout``
        bounds the whole stream (default: none). A failure of the stream itself raises.
        """
        return self._stream(_calls.encode_stream(**arguments(locals())), timeout)

    def predict_tokens_stream(
        self,
        batches: Iterable[Batch[TextItem]],
        *,
        top_k: int | None = None,
        return_logits: bool = False,
        truncate: bool = False,
        head: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[StreamResult[PredictTokensResult]]:
        """``predict_tokens`` over a stream of batches (see :meth:`encode_stream`)."""
        return self._stream(_calls.predict_tokens_stream(**arguments(locals())), timeout)

    def classify_stream(
        self,
        batches: Iterable[Batch[TextItem]],
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
    ) -> Iterator[StreamResult[ClassifyResult]]:
        """``classify`` over a stream of batches (see :meth:`encode_stream`)."""
        return self._stream(_calls.classify_stream(**arguments(locals())), timeout)

    def answer_question_stream(
        self,
        batches: Iterable[Batch[QuestionItem]],
        *,
        top_k: int | None = None,
        max_answer_length: int | None = None,
        doc_stride: int | None = None,
        allow_no_answer: bool = False,
        head: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[StreamResult[AnswerQuestionResult]]:
        """``answer_question`` over a stream of batches (see :meth:`encode_stream`)."""
        return self._stream(_calls.answer_question_stream(**arguments(locals())), timeout)

    def run_stream(
        self,
        batches: Iterable[Batch[TextItem]],
        *,
        head: str,
        options: Mapping[str, Any] | None = None,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> Iterator[StreamResult[RunResult]]:
        """``run`` over a stream of batches (see :meth:`encode_stream`).

        ``head``, ``options`` and ``truncate`` apply to every batch::

            batches = (Batch(chunk, id=str(i)) for i, chunk in enumerate(chunks))
            for outcome in client.run_stream(batches, head="ner"):
                print(outcome.id, outcome.unwrap()[0]["entities"])
        """
        return self._stream(_calls.run_stream(**arguments(locals())), timeout)

    def run_heads_stream(
        self,
        batches: Iterable[Batch[TextItem]],
        heads: Sequence[HeadSpec],
        *,
        truncate: bool = False,
        timeout: float | None = None,
    ) -> Iterator[StreamResult[RunHeadsResult]]:
        """``run_heads`` over a stream of batches (see :meth:`encode_stream`); ``heads`` and
        ``truncate`` apply to every batch."""
        return self._stream(_calls.run_heads_stream(**arguments(locals())), timeout)

    # --- transport ------------------------------------------------------------------------------

    def _unary(self, call: _calls.Unary[T], timeout: float | None | NotGiven) -> T:
        method = call.rpc(self._stubs)
        attempts = Attempts(given(timeout, self._settings.timeout), self._settings.max_retries)
        while True:
            try:
                # a grpc.UnaryUnaryMultiCallable
                response, rpc = method.with_call(
                    call.sent(),
                    timeout=attempts.remaining(),
                    metadata=outgoing(self._settings.call_metadata),
                )
            except grpc.RpcError as rpc_error:
                time.sleep(attempts.after(rpc_error))
            else:
                # in the initial metadata; behind Ray Serve's proxy, in the trailing metadata
                trailing = rpc.trailing_metadata()
                request_id = request_id_in(rpc.initial_metadata()) or request_id_in(trailing)
                versions = head_versions_in(trailing)
                return with_request_id(call.convert(response), request_id, versions)

    def _stream(
        self, call: _calls.Stream[Any, T], timeout: float | None
    ) -> Iterator[StreamResult[T]]:
        if not isinstance(call.batches, Iterable):
            raise TypeError("batches: the blocking client streams an Iterable of Batch")
        pump = _RequestPump(call.batches, call.to_request)
        rpc = call.rpc(self._stubs)(
            iter(pump), timeout=timeout, metadata=outgoing(self._settings.call_metadata)
        )
        request_id = None
        with streaming(rpc, pump):
            for response in rpc:
                if request_id is None:  # the headers came before the first response
                    request_id = request_id_in(rpc.initial_metadata())
                yield with_request_id(call.convert(response), request_id)

    def _download(self, call: _calls.Download, timeout: float | None) -> Path:
        with _jobs.Download(call.destination) as target:
            rpc = call.rpc(self._stubs)(
                call.request, timeout=timeout, metadata=outgoing(self._settings.call_metadata)
            )
            for response in rpc:
                target.add(response)
        return target.destination


class _RequestPump(Generic[B]):
    """Batches to requests, iterated by gRPC's sending thread.

    A failure there (the caller's iterable raising, a malformed batch) would only cancel the
    call with a logged traceback; instead the stream ends cleanly, every batch sent so far is
    answered, and the caller gets the original exception.
    """

    def __init__(self, batches: Iterable[B], to_request: Callable[[B], object]) -> None:
        self._batches = batches
        self._to_request = to_request
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[object]:
        try:
            for batch in self._batches:
                yield self._to_request(batch)
        except Exception as error:  # handed to the caller by Client._stream
            self.error = error
