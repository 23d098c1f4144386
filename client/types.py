"""What the client takes and returns: frozen dataclasses and numpy arrays, never protobuf messages.

Character offsets (``Span``, ``Answer.start``/``end``) count Unicode code points of the string
that was sent, so ``text[span.start:span.end]`` is the right slice in Python.

Dataclasses holding numpy arrays (``Embedding``, ``TokenPrediction``, ``HeadOutput``) compare by
identity: an array has no single truth value. Their arrays are read-only, like the rest of a result.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NamedTuple, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import HeadserveError

__all__ = [
    "Answer",
    "AnswerQuestionResult",
    "BackboneInfo",
    "Batch",
    "Classification",
    "ClassifyResult",
    "Embedding",
    "EncodeResult",
    "AnswerQuestionHead",
    "ClassifyHead",
    "EncodeHead",
    "GenericHead",
    "HeadClassification",
    "HeadInfo",
    "HeadRan",
    "HeadResult",
    "HeadSpec",
    "HeadValue",
    "PredictTokensHead",
    "RunHeadsResult",
    "ImageInputInfo",
    "HeadOutput",
    "LabelScore",
    "MaskPrediction",
    "ModelInfo",
    "OutputField",
    "ParameterInfo",
    "PluginFailure",
    "Pooling",
    "SparseVector",
    "RankedDocument",
    "RerankResult",
    "TruncationSide",
    "ChunkMode",
    "ChunkBy",
    "ChunkClassification",
    "LongText",
    "EmbeddingChunk",
    "PredictTokensResult",
    "QuestionAnswer",
    "QuestionContext",
    "QuestionItem",
    "RequestLimits",
    "RunResult",
    "Span",
    "StreamResult",
    "TextItem",
    "Timing",
    "TokenCandidate",
    "TokenPrediction",
    "Tokenization",
    "Usage",
]

T = TypeVar("T")
ItemT_co = TypeVar("ItemT_co", covariant=True)

Pooling: TypeAlias = Literal["cls", "mean", "none", "lasttoken"]
"""How ``encode`` pools token states: first token, mean over real tokens, or not at all."""

TruncationSide: TypeAlias = Literal["right", "left"]
"""Which end of a too-long input ``truncate`` cuts: the end of the text, or its start."""

ChunkMode: TypeAlias = Literal["none", "independent", "late"]
"""How ``encode`` reads a long text in chunks: not at all, each chunk on its own, or late
chunking (the whole text read in windows, each chunk pooled from the window around it)."""

ChunkBy: TypeAlias = Literal["tokens", "sentences"]
"""Where chunks are cut: every N tokens, or at sentence boundaries."""

LongText: TypeAlias = Literal["mean", "max", "first"]
"""How ``classify`` reads a long text in chunks: the mean of the chunks' logits, their maximum
per label, or the first chunk alone."""

TextItem: TypeAlias = str | tuple[str, str] | bytes | os.PathLike[str]
"""One input of encode, classify, run...: a text, a ``(text, text_pair)`` pair, or, for a
server whose backbone reads images, an image: its encoded bytes (PNG, JPEG, GIF, WebP, BMP)
or the path of its file (a ``pathlib.Path``; a ``str`` is always text)."""


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuestionContext:
    """One input of ``answer_question``: a question and the context to find its answer in."""

    question: str
    context: str


QuestionItem: TypeAlias = tuple[str, str] | QuestionContext
"""One input of ``answer_question``: a ``(question, context)`` tuple or a ``QuestionContext``."""


@dataclass(frozen=True, slots=True)
class Batch(Generic[ItemT_co]):
    """One request of a stream: its items and a client-chosen id, echoed in its result."""

    items: Sequence[ItemT_co]
    id: str


@dataclass(frozen=True, slots=True)
class StreamResult(Generic[T]):
    """The outcome of one stream batch: exactly one of ``result`` and ``error`` is set."""

    id: str
    """The id of the :class:`Batch` this answers."""
    result: T | None = None
    error: HeadserveError | None = None
    request_id: str | None = None
    """The stream call's request id (the server's ``x-request-id``): in its log lines and
    trace. ``None`` from a server that sends none."""

    @property
    def ok(self) -> bool:
        """Whether the batch succeeded."""
        return self.error is None

    def unwrap(self) -> T:
        """The result, or raise the batch's error."""
        if self.error is not None:
            raise self.error
        if self.result is None:  # unreachable for results the client builds
            raise ValueError(f"stream result {self.id!r} has neither result nor error")
        return self.result


# --- shared -------------------------------------------------------------------------------------


class Span(NamedTuple):
    """Half-open ``[start, end)`` range of code points: ``text[start:end]``."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What a call cost."""

    input_tokens: int
    """Tokens given to the backbone, special tokens and every window of a long context included."""


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a call's time went on the server, in milliseconds."""

    queue_ms: float
    inference_ms: float


class _PerItem(Generic[T]):
    """Lets a result be used as the sequence of its per-item results: ``len``, ``[i]``, ``for``."""

    __slots__ = ()

    def _per_item(self) -> tuple[T, ...]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._per_item())

    def __iter__(self) -> Iterator[T]:
        return iter(self._per_item())

    def __getitem__(self, index: int) -> T:
        return self._per_item()[index]


# --- encode -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Embedding:
    """One item's embedding: a pooled vector, or per-token states with ``pooling="none"``,
    or, from a sparse head, its terms and weights (``sparse``)."""

    vector: npt.NDArray[np.float32] | None
    """Pooled vector, shape ``[hidden_size]``; ``None`` with ``pooling="none"`` or sparse."""
    token_states: npt.NDArray[Any] | None
    """With ``pooling="none"``: hidden states, shape ``[tokens, hidden_size]``; else ``None``."""
    tokens: tuple[str, ...]
    """With ``pooling="none"``: the token of each row of ``token_states``."""
    sparse: SparseVector | None = None
    """From a sparse head (SPLADE): vocabulary terms and weights, heaviest first."""
    chunks: tuple[EmbeddingChunk, ...] = ()
    """With ``chunk_mode``: each chunk of the text, in order; ``vector`` is then the whole
    text's (the chunks' vectors' mean, weighted by their tokens)."""


@dataclass(frozen=True, slots=True)
class EmbeddingChunk:
    """One chunk of a long text: its vector, and where it lies in the text sent."""

    vector: npt.NDArray[np.float32]
    start: int
    """The first code point of the text the chunk covers (``text[start:end]``)."""
    end: int
    tokens: int
    """The chunk's tokens (special tokens and the prompt not counted)."""


@dataclass(frozen=True, slots=True)
class SparseVector:
    """A sparse head's vector: vocabulary ids, their tokens and weights, heaviest first."""

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    weights: tuple[float, ...]

    def as_dict(self) -> dict[int, float]:
        """``{token_id: weight}``, as sparse-vector stores take it."""
        return dict(zip(self.token_ids, self.weights, strict=True))


@dataclass(frozen=True, slots=True)
class EncodeResult(_PerItem[Embedding]):
    """Result of ``encode``: one :class:`Embedding` per item, in order, in ``embeddings``.

    The result is also a sequence of them: ``len(result)``, ``result[i]``, ``for x in result``.
    """

    embeddings: tuple[Embedding, ...]
    usage: Usage
    timing: Timing
    request_id: str | None = None
    """The call's request id (the server's ``x-request-id``): in its log lines, trace and
    error details. ``None`` from a server that sends none."""
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that answered (``{name: version}``, the server's
    ``headserve-head-versions`` metadata); empty from a server that sends none."""

    def _per_item(self) -> tuple[Embedding, ...]:
        return self.embeddings

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        """The pooled vectors stacked, shape ``[items, hidden_size]``.

        Raises ``ValueError`` for a result encoded with ``pooling="none"``.
        """
        vectors = [e.vector for e in self.embeddings]
        if any(v is None for v in vectors):
            raise ValueError("no pooled vectors: this result was encoded with pooling='none'")
        if not vectors:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([v for v in vectors if v is not None])


# --- predict tokens -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenCandidate:
    """A token proposed for a mask."""

    token_id: int
    token: str
    probability: float


@dataclass(frozen=True, slots=True)
class MaskPrediction:
    """The candidates for one mask of an item, best first."""

    position: int
    """Index of the mask among the item's tokens, special tokens included."""
    span: Span
    """Where the mask token stands in the text."""
    candidates: tuple[TokenCandidate, ...]


@dataclass(frozen=True, slots=True, eq=False)
class TokenPrediction:
    """One item's mask predictions, in text order."""

    masks: tuple[MaskPrediction, ...]
    logits: npt.NDArray[Any] | None
    """With ``return_logits=True``: shape ``[tokens, vocab_size]``; else ``None``."""


@dataclass(frozen=True, slots=True)
class PredictTokensResult(_PerItem[TokenPrediction]):
    """Result of ``predict_tokens``: a :class:`TokenPrediction` per item, in order.

    The result is also a sequence of them: ``len(result)``, ``result[i]``, ``for x in result``.
    """

    predictions: tuple[TokenPrediction, ...]
    usage: Usage
    timing: Timing
    request_id: str | None = None
    """The call's request id (the server's ``x-request-id``): in its log lines, trace and
    error details. ``None`` from a server that sends none."""
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that answered (``{name: version}``, the server's
    ``headserve-head-versions`` metadata); empty from a server that sends none."""

    def _per_item(self) -> tuple[TokenPrediction, ...]:
        return self.predictions


# --- classify -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelScore:
    """A label and its score: a softmax over the labels, a sigmoid per label for a
    multi-label or a one-label head (a cross-encoder's relevance), or the logit itself,
    by the head's ``activation``; ``logit`` is the raw logit (``None``: the head gave none)."""

    label: str
    probability: float
    logit: float | None = None


@dataclass(frozen=True, slots=True)
class HeadClassification:
    """What one classifier head said about an item, labels best first; ``activation`` says how
    its logits became probabilities ("softmax", "sigmoid", "none"; "" from older servers)."""

    head: str
    multi_label: bool
    labels: tuple[LabelScore, ...]
    activation: str = ""
    chunks: tuple[ChunkClassification, ...] = ()
    """With ``long_text`` and ``return_chunks``: each chunk's labels, in the text's order."""

    @property
    def top(self) -> LabelScore | None:
        """The best label, or ``None`` when the head returned none."""
        return self.labels[0] if self.labels else None


@dataclass(frozen=True, slots=True)
class ChunkClassification:
    """One chunk of a long text, classified on its own: ``text[start:end]``, its tokens and
    its labels, best first."""

    start: int
    end: int
    tokens: int
    labels: tuple[LabelScore, ...]

    @property
    def top(self) -> LabelScore | None:
        return self.labels[0] if self.labels else None


@dataclass(frozen=True, slots=True)
class Classification:
    """One item's classifications, one per requested head, in the order asked."""

    heads: tuple[HeadClassification, ...]

    def head(self, name: str) -> HeadClassification:
        """The classification by the head called ``name``; ``KeyError`` if it was not asked."""
        for head in self.heads:
            if head.head == name:
                return head
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ClassifyResult(_PerItem[Classification]):
    """Result of ``classify``: a :class:`Classification` per item, in order (``classifications``).

    The result is also a sequence of them: ``len(result)``, ``result[i]``, ``for x in result``.
    """

    classifications: tuple[Classification, ...]
    usage: Usage
    timing: Timing
    request_id: str | None = None
    """The call's request id (the server's ``x-request-id``): in its log lines, trace and
    error details. ``None`` from a server that sends none."""
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that answered (``{name: version}``, the server's
    ``headserve-head-versions`` metadata); empty from a server that sends none."""

    def _per_item(self) -> tuple[Classification, ...]:
        return self.classifications


# --- rerank -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankedDocument:
    """One document of a ``rerank``: its index in the call, its score, and its text when
    asked (``return_documents``)."""

    index: int
    score: float
    document: str | None = None


@dataclass(frozen=True, slots=True)
class RerankResult(_PerItem[RankedDocument]):
    """Result of ``rerank``: the documents best first (``results``), and the head that scored.

    The result is also a sequence of them: ``len(result)``, ``result[0]``, ``for d in result``.
    """

    results: tuple[RankedDocument, ...]
    head: str
    usage: Usage
    timing: Timing
    request_id: str | None = None
    """The call's request id (the server's ``x-request-id``): in its log lines, trace and
    error details. ``None`` from a server that sends none."""
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that answered (``{name: version}``, the server's
    ``headserve-head-versions`` metadata); empty from a server that sends none."""

    def _per_item(self) -> tuple[RankedDocument, ...]:
        return self.results


# --- answer question ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer span of the context: ``context[start:end] == text``."""

    text: str
    score: float
    start: int
    end: int
    no_answer: bool
    """True for the "no answer" candidate (empty text, ``start == end == 0``)."""

    @property
    def span(self) -> Span:
        """``(start, end)`` as a :class:`Span`."""
        return Span(self.start, self.end)


@dataclass(frozen=True, slots=True)
class QuestionAnswer:
    """One item's answers, best first."""

    answers: tuple[Answer, ...]
    windows: int
    """How many windows the context was split into."""

    @property
    def best(self) -> Answer | None:
        """The best answer, or ``None`` when there is none."""
        return self.answers[0] if self.answers else None


@dataclass(frozen=True, slots=True)
class AnswerQuestionResult(_PerItem[QuestionAnswer]):
    """Result of ``answer_question``: a :class:`QuestionAnswer` per item, in order (``answers``).

    The result is also a sequence of them: ``len(result)``, ``result[i]``, ``for x in result``.
    """

    answers: tuple[QuestionAnswer, ...]
    usage: Usage
    timing: Timing
    request_id: str | None = None
    """The call's request id (the server's ``x-request-id``): in its log lines, trace and
    error details. ``None`` from a server that sends none."""
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that answered (``{name: version}``, the server's
    ``headserve-head-versions`` metadata); empty from a server that sends none."""

    def _per_item(self) -> tuple[QuestionAnswer, ...]:
        return self.answers


# --- run (generic heads) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class HeadOutput:
    """What a head returned for one item: the fields and tensors its output schema declares.

    A field or tensor the schema marks optional (:attr:`OutputField.optional`) may be absent.
    ``output[name]`` looks ``name`` up among the fields, then the tensors::

        output = client.run("ner", ["Ada lives in London."])[0]
        output["entities"]  # a field: [{"label": "LOC", "start": 13.0, ...}]
        output["logits"]  # a tensor: float32, shape [tokens, labels]
    """

    fields: Mapping[str, Any]
    """Structured values as plain Python: dicts, lists, str, bool, ``None`` and numbers.

    JSON numbers travel as doubles, so every number is a ``float``, integers included
    (``3.0``, not ``3``): use ``int(value)`` where the schema says ``integer``.
    """
    tensors: Mapping[str, npt.NDArray[Any]]
    """Tensors by name, as read-only numpy arrays (bfloat16 arrives as float32)."""

    def __getitem__(self, name: str) -> Any:
        """The field called ``name``, else the tensor; ``KeyError`` if there is neither."""
        if name in self.fields:
            return self.fields[name]
        if name in self.tensors:
            return self.tensors[name]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self.fields or name in self.tensors

    def __iter__(self) -> Iterator[str]:
        """The names of the fields, then of the tensors."""
        yield from self.fields
        yield from (name for name in self.tensors if name not in self.fields)

    def get(self, name: str, default: Any = None) -> Any:
        """``output[name]``, or ``default`` when the output has no such field or tensor."""
        return self[name] if name in self else default


@dataclass(frozen=True, slots=True)
class RunResult(_PerItem[HeadOutput]):
    """Result of ``run``: one :class:`HeadOutput` per item, in order, in ``outputs``.

    The result is also a sequence of them: ``len(result)``, ``result[i]``, ``for x in result``.
    """

    head: str
    """The head that ran."""
    task: str
    """Its task, e.g. ``"token_classification"``."""
    outputs: tuple[HeadOutput, ...]
    usage: Usage
    timing: Timing
    request_id: str | None = None
    """The call's request id (the server's ``x-request-id``): in its log lines, trace and
    error details. ``None`` from a server that sends none."""
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that answered (``{name: version}``, the server's
    ``headserve-head-versions`` metadata); empty from a server that sends none."""

    def _per_item(self) -> tuple[HeadOutput, ...]:
        return self.outputs


# --- run_heads (several heads, one backbone pass) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodeHead:
    """An encode head in a ``run_heads`` call, with the options of :meth:`Client.encode`."""

    head: str
    pooling: Pooling | None = None
    normalize: bool | None = None
    truncate: bool = False
    dimensions: int | None = None
    prompt_name: str | None = None
    prompt: str | None = None
    truncation_side: TruncationSide | None = None
    sparse_top_k: int | None = None
    sparse_min_weight: float | None = None
    chunk_mode: ChunkMode | None = None
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    chunk_by: ChunkBy | None = None


@dataclass(frozen=True, slots=True)
class ClassifyHead:
    """A classify head in a ``run_heads`` call, with the options of :meth:`Client.classify`."""

    head: str
    top_k: int = 0
    truncate: bool = False
    long_text: LongText | None = None
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    chunk_by: ChunkBy | None = None
    return_chunks: bool = False


@dataclass(frozen=True, slots=True)
class PredictTokensHead:
    """A masked-LM head in a ``run_heads`` call (options of :meth:`Client.predict_tokens`)."""

    head: str
    top_k: int | None = None
    return_logits: bool = False
    truncate: bool = False


@dataclass(frozen=True, slots=True)
class AnswerQuestionHead:
    """A question-answering head in a ``run_heads`` call: it reads an item ``(question,
    context)`` (options of :meth:`Client.answer_question`)."""

    head: str
    top_k: int | None = None
    max_answer_length: int | None = None
    doc_stride: int | None = None
    allow_no_answer: bool = False


@dataclass(frozen=True, slots=True)
class GenericHead:
    """A head of any other task in a ``run_heads`` call, with its own JSON options (as
    :meth:`Client.run` takes them)."""

    head: str
    options: Mapping[str, Any] | None = None


HeadSpec: TypeAlias = (
    str | EncodeHead | ClassifyHead | PredictTokensHead | AnswerQuestionHead | GenericHead
)
"""A head of a ``run_heads`` call: its name alone (its task's default options), or its name
with options of its task."""

HeadValue: TypeAlias = (
    Embedding | HeadClassification | TokenPrediction | QuestionAnswer | HeadOutput
)
"""What one head returns for one item, by task: encode, classify, mlm, qa, any other."""

V = TypeVar("V", Embedding, HeadClassification, TokenPrediction, QuestionAnswer, HeadOutput)


@dataclass(frozen=True, slots=True, eq=False)
class HeadResult:
    """One head's outcome for one item: exactly one of ``value`` and ``error`` is set. An
    error is that head's alone (it refused the item or its options, or failed): the other
    heads' results for the item stand."""

    head: str
    value: HeadValue | None = None
    error: HeadserveError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> HeadValue:
        """The value, or raise the head's error."""
        if self.error is not None:
            raise self.error
        if self.value is None:  # unreachable for results the client builds
            raise ValueError(f"head {self.head!r} returned neither a value nor an error")
        return self.value

    def unwrap_as(self, kind: type[V]) -> V:
        """The value as ``kind`` (``Embedding``, ``HeadClassification``...), or raise the
        head's error; a ``TypeError`` if the head returned another kind."""
        value = self.unwrap()
        if not isinstance(value, kind):
            raise TypeError(
                f"head {self.head!r} returned {type(value).__name__}, not {kind.__name__}"
            )
        return value


@dataclass(frozen=True, slots=True)
class HeadRan:
    """A head of a ``run_heads`` call as the server resolved it."""

    head: str
    task: str
    """Its task (``"encode"``, ``"classify"``, ``"mlm"``, ``"qa"`` or a plugin's);
    ``""`` when the server serves no head of that name."""


@dataclass(frozen=True, slots=True)
class RunHeadsResult(_PerItem[tuple[HeadResult, ...]]):
    """Result of ``run_heads``: per item, one :class:`HeadResult` per head, in the order the
    heads were given. ``result[i][j]`` is head ``j`` on item ``i``; ``result.column(j)``
    is head ``j`` on every item."""

    results: tuple[tuple[HeadResult, ...], ...]
    heads: tuple[HeadRan, ...]
    usage: Usage
    """Tokens the backbone read: an item's input shared by several heads counts once."""
    timing: Timing
    request_id: str | None = None
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that answered (``{name: version}``, the server's
    ``headserve-head-versions`` metadata); empty from a server that sends none."""

    def _per_item(self) -> tuple[tuple[HeadResult, ...], ...]:
        return self.results

    def column(self, head: int) -> tuple[HeadResult, ...]:
        """Head ``head`` (its position in the call) on every item, in order."""
        return tuple(per_item[head] for per_item in self.results)


# --- models -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackboneInfo:
    """The one model the server holds."""

    source: str
    model_type: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_length: int
    """Longest input in tokens, special tokens included."""
    device: str
    dtype: str
    parameters: int
    mask_token: str
    """The token ``predict_tokens`` looks for, e.g. ``"[MASK]"``."""
    load_seconds: float
    kind: str = ""
    """The backbone kind that loaded it, e.g. ``"transformers-text"``, ``"efficientnet-lite"``."""
    modality: str = "text"
    """What an item must be: ``"text"`` or ``"image"``."""
    image: ImageInputInfo | None = None
    """An image backbone's input size and preprocessing."""
    runtime: str = ""
    """What runs the pass: ``"torch"``, ``"torch (traced)"``, ``"onnxruntime 1.32.0"``."""
    family: str = ""
    """The model family, e.g. ``"BERT"``, ``"ModernBERT"`` ("" from older servers)."""
    verified: bool = False
    """Whether the family is in the server's verified table (docs/backbones.md); False for a
    checkpoint served with ``--allow-unverified-family`` (and from older servers)."""
    packing: str = ""
    """How rows share a pass, e.g. ``"packed, block-diagonal mask"`` or ``"padded batches"``."""


@dataclass(frozen=True, slots=True)
class ImageInputInfo:
    """How an image backbone turns an encoded image into its input tensor."""

    height: int
    width: int
    preprocessing: str
    """The steps in order, e.g. ``"RGB, resize ..., center crop 224x224, ..."``."""
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class OutputField:
    """One entry of a ``run`` head's output schema (:attr:`HeadInfo.outputs`)."""

    name: str
    kind: Literal["value", "tensor"]
    """Where the output holds it: ``HeadOutput.fields`` ("value") or ``HeadOutput.tensors``.

    A kind this client does not know (from a newer server) reads as ``"value"``.
    """
    type: str
    """A value's JSON type, e.g. ``"list<object{label:string,score:number}>"``; a tensor's
    element type, e.g. ``"float32"``."""
    shape: str
    """A tensor's dimensions by name, e.g. ``"[tokens, labels]"``; empty for a value."""
    description: str
    optional: bool
    """Absent from an output unless an option asks for it."""


@dataclass(frozen=True, slots=True)
class ParameterInfo:
    """One option a ``run`` head takes (:attr:`HeadInfo.parameters`), for ``run(options=...)``."""

    name: str
    type: str
    """JSON type: ``"string"``, ``"number"``, ``"integer"`` or ``"boolean"``."""
    default: Any
    """The value used when the option is absent, decoded from JSON (``None`` if none is given)."""
    description: str
    choices: tuple[str, ...]
    """The allowed values of a string option; empty: any."""


@dataclass(frozen=True, slots=True)
class HeadInfo:
    """A task head the server loaded, and whether calls may use it."""

    name: str
    task: str
    labels: tuple[str, ...]
    trained: bool
    usable: bool
    plugin: str
    distribution: str
    version: str
    source: str
    multi_label: bool
    is_default: bool
    detail: str
    """Why the head is not usable, when it is not."""
    outputs: tuple[OutputField, ...] = ()
    """For a head served by ``run``: what each output holds; empty for the built-in tasks."""
    parameters: tuple[ParameterInfo, ...] = ()
    """For a head served by ``run``: the options it takes."""
    settings: Mapping[str, str] = field(default_factory=dict)
    """How the head computes, e.g. ``{"pooling": "mean"}``, ``{"activation": "sigmoid"}``."""
    head_version: str = ""
    """The head's own version, a digest of its weights' files (``sha256:...``): changes
    when a retrained head replaces it."""
    shadow_of: str = ""
    """For a shadow head: the live head it runs beside (it answers no call of its own)."""
    shadow: ShadowInfo | None = None
    """For a shadow head: how it agrees with the live head so far."""


@dataclass(frozen=True, slots=True)
class ShadowInfo:
    """A shadow head's agreement with its live head, over the items both answered (means;
    NaN before any item, and for the measures of other tasks)."""

    fraction: float
    calls: int
    items: int
    failures: int
    skipped: int
    top1_agreement: float
    """classify: the share of items with the same best label."""
    mean_abs_probability_difference: float
    """classify: the mean absolute difference of the labels' probabilities."""
    mean_cosine: float
    """encode: the mean cosine of the two vectors."""
    exact_match: float
    """qa: the share of items with the same best answer text."""


@dataclass(frozen=True, slots=True)
class HeadChange:
    """What an admin call changed: the head as it now serves (for ``unload_head``: as it
    served), the version it replaced, and how many servers had applied it."""

    head: HeadInfo
    replaced_version: str = ""
    """The version of the head a ``load_head(..., replace=True)`` replaced; else empty."""
    applied: int = 1
    """Servers (Ray Serve replicas) that had applied the change when it was answered."""


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A head plugin that failed to load, and why."""

    plugin: str
    reason: str


@dataclass(frozen=True, slots=True)
class SchedulerInfo:
    """How the server batches rows from every call and head into backbone passes."""

    max_batch_tokens: int
    """Padded tokens per batch: rows x the longest row."""
    max_batch_items: int
    max_wait_ms: float
    """Longest wait for a batch to fill while the model is idle."""
    max_queue_items: int
    """Rows waiting for the model; beyond it unary calls are refused (RESOURCE_EXHAUSTED)."""
    stream_in_flight_items: int
    """Items of one stream in flight; beyond it the server stops reading the stream."""
    torch_threads: int
    """torch threads of each model worker."""
    workers: int
    """Model workers: batches computed at once, each on its own thread."""
    long_call_tokens: int = 0
    """A call of more backbone tokens queues that many at a time, in batches of its own,
    leaving a worker to other calls (0 from a server that does not say)."""
    bulk_batch_tokens: int = 0
    """While interactive work is queued or recent, a batch carries at most this many tokens of
    bulk calls' rows (0 from a server that does not say)."""
    feature_cache_bytes: int = 0
    """Bytes of backbone passes the server keeps for rows seen before (0: off)."""


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What one call may ask of the server. Over an item limit a call gets
    ``InvalidArgumentError`` naming the limit; over the stream or call limit,
    ``ResourceExhaustedError``."""

    max_request_items: int
    """Items in one request (a unary call, or one batch of a stream)."""
    max_item_chars: int
    """Characters in one text field of an item."""
    max_item_tokens: int
    """Backbone tokens one item may cost, every head and QA window counted."""
    max_message_bytes: int
    """Bytes of one request or response message."""
    max_concurrent_calls: int
    max_streams: int
    max_image_pixels: int = 0
    """Pixels of one decoded image item; a larger image is refused before it is decoded."""
    max_image_decode_bytes: int = 0
    """Memory the images decoding at once may take on the server; an image waits for room
    (0 from a server that does not say)."""
    max_head_upload_bytes: int = 0
    """Bytes of a head artifact uploaded to ``load_head`` (0 from a server that does not say)."""
    max_document_tokens: int = 0
    """Tokens of one text the server reads in chunks or windows (0 from a server that does
    not say)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Result of ``model_info``: the backbone, its heads and the plugins that failed."""

    backbone: BackboneInfo
    heads: tuple[HeadInfo, ...]
    failed_plugins: tuple[PluginFailure, ...]
    server_version: str
    allow_untrained: bool
    scheduler: SchedulerInfo
    limits: RequestLimits | None = None
    """``None`` from a server that does not report them."""

    def head(self, name: str) -> HeadInfo:
        """The head called ``name``; ``KeyError`` if the server has none."""
        for head in self.heads:
            if head.name == name:
                return head
        raise KeyError(name)

    def default_head(self, task: str) -> HeadInfo | None:
        """The default head of ``task`` (``"encode"``, ``"mlm"``, ``"classify"``, ``"qa"``...)."""
        return next((h for h in self.heads if h.task == task and h.is_default), None)


@dataclass(frozen=True, slots=True)
class Tokenization:
    """One item as the server's tokenizer splits it."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    offsets: tuple[Span, ...]
    """Code-point span of each token in the text it came from; ``(0, 0)`` for special tokens."""
    token_type_ids: tuple[int, ...]
    sequence_ids: tuple[int, ...]
    """Per token: 0 from ``text``, 1 from ``text_pair``, -1 for a special token."""


JobStatus: TypeAlias = Literal[
    "validating", "in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled"
]
"""A batch job's life, in OpenAI's Batch API words: queued as ``validating``, then
``in_progress``, ``finalizing``, ``completed``; or ``failed``; or ``cancelling``, ``cancelled``."""

FINISHED: tuple[JobStatus, ...] = ("completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class JobFile:
    """A batch job's input file (purpose ``"batch"``), or a job's output or error file
    (``"batch_output"``), kept by the server."""

    id: str
    bytes: int
    created_at: int
    """Unix seconds."""
    filename: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Job:
    """A batch job: its status and progress (``client.get_job(id)``)."""

    id: str
    status: JobStatus
    endpoint: str
    input_file_id: str
    total: int
    """Lines in the input file."""
    completed: int
    """Lines answered (in the output file)."""
    failed: int
    """Lines failed (in the error file, each with its ``custom_id`` and reason)."""
    output_file_id: str | None
    """Set once the job has finished (``download_job_file``)."""
    error_file_id: str | None
    errors: tuple[tuple[str, str], ...]
    """Why the job failed as a whole: ``(code, message)`` pairs, e.g. ``write_failed``."""
    metadata: Mapping[str, str]
    created_at: int
    """Unix seconds, as the other ``..._at`` times; ``None``: not reached."""
    in_progress_at: int | None
    finished_at: int | None
    """When it completed, failed or was cancelled."""

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled: nothing more will change."""
        return self.status in FINISHED
