"""The head contract: what a head plugin receives, implements and returns.

A head is a small module on top of the ONE shared backbone. The server owns the
backbone, the tokenizer, batching and the transport; a head owns its weights and
the meaning of its rows. One request item flows through a head in three steps:

    prepare(item, options) -> Prepared     tokenize the item into backbone rows
    forward(features, rows) -> outputs     run on the shared backbone's hidden
                                           states of those rows (batched, mixed
                                           with other heads' rows by the server)
    finish(prepared, outputs, options)     turn the row outputs into a result

Rules: a head never imports grpc or a *_pb2 module, never holds its own
backbone, and returns plain Python / numpy values from `finish`. Bad input is
reported by raising `InvalidInput(field, message)`; the server adds the item
index and maps it to INVALID_ARGUMENT.

A plugin is an object registered under the entry-point group `headserve.heads`
with a `task` name, the `contract_version` it was written for, and
`load(context) -> Head`.

Heads of the built-in tasks ("encode", "mlm", "classify", "qa") are called
through their own services. A head of any other task declares `outputs` (its
output schema) and `parameters` (its options), and is called through the
generic Heads service: `prepare` gets a `TextItem` and `RunOptions`, `finish`
returns an `Output`. docs/plugins.md is the guide.

Version 1 of the contract is this module, `headserve.plugins.text`,
`headserve.plugins.task_model` and `headserve.plugins.tasks.TextItem`; later, additively,
`headserve.plugins.documents` (texts longer than the window, read in windows or chunks).

Backbones of other modalities (images) came later, additively: a row may carry `pixels`
instead of token ids, `Features.pooled` holds the backbone's pooled output, and
`BackboneView.modality` says which kind of item the backbone reads. A backbone kind is itself
a plugin: `headserve.plugins.backbones` is its contract.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    runtime_checkable,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

CONTRACT_VERSION = 1
ENTRY_POINT_GROUP = "headserve.heads"

ItemT = TypeVar("ItemT")  # what one request item is, e.g. tasks.TextItem
OptionsT = TypeVar("OptionsT")  # the request's options, e.g. tasks.ClassifyOptions
ResultT = TypeVar("ResultT")  # one item's result, e.g. tasks.Classification


class InvalidInput(ValueError):
    """Raised by a head for bad input; `field` is relative to the item, e.g. "text"."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class HeadSpec:
    """How the operator configured one head: `--head NAME=PLUGIN[:SOURCE][,key=value...]`."""

    name: str
    plugin: str
    source: Path | None = None  # a checkpoint folder; None: the backbone's own folder
    options: Mapping[str, str] = field(default_factory=dict)


Modality = Literal["text", "image"]


@dataclass(frozen=True)
class Pixels:
    """An image row's input: the preprocessed tensor [channels, height, width] (float32), and
    a key naming it (a digest of the image's bytes and the preprocessing): equal keys, equal
    values. Rows with equal keys are computed once."""

    key: str
    values: np.ndarray = field(compare=False, repr=False)


@dataclass(frozen=True)
class LinearClassifier:
    """A classifier that reads the pooled features: logits = pooled @ weight.T + bias."""

    weight: torch.Tensor  # [labels, hidden]
    bias: torch.Tensor  # [labels]
    labels: tuple[str, ...]
    multi_label: bool = False


@dataclass(frozen=True)
class BackboneView:
    """What a head may know of the shared backbone (read only).

    On an image backbone (`modality` "image") `tokenizer` is None, `max_length` is 1 (an image
    is one row), and `classifier` is the checkpoint's own classifier, when it has one. The
    server decodes and preprocesses an image item before a head sees it
    (`tasks.ImageItem.pixels`)."""

    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerFast
    device: torch.device
    dtype: torch.dtype
    max_length: int
    source: Path
    module: torch.nn.Module  # to share (tie) weights, never to run
    allow_pickle: bool = False  # the operator allows pickle checkpoints (--allow-pickle)
    modality: Modality = "text"
    kind: str = "transformers-text"  # the backbone kind (entry point) that loaded it
    classifier: LinearClassifier | None = None
    # a fresh copy of the backbone's last block(s), from `Features.intermediate` to
    # `Features.pooled`, for a head that trains its own (None: the kind offers none)
    tail: Callable[[], torch.nn.Module | None] | None = None

    @property
    def hidden_size(self) -> int:
        """Width of a row's features; on an image backbone, of its pooled features (a CNN's
        config lists one size per stage: the last is it)."""
        sizes = getattr(self.config, "hidden_sizes", None)
        return int(sizes[-1] if sizes else self.config.hidden_size)


@dataclass(frozen=True)
class LoadContext:
    spec: HeadSpec
    backbone: BackboneView

    @property
    def source(self) -> Path:
        return self.spec.source or self.backbone.source


@dataclass(frozen=True)
class Row:
    """One backbone input row. `extra` is the head's own per-row data for `forward`.

    A text row has token ids; an image row has `pixels` (and no ids). `attended`: only the
    first `attended` tokens are attended to; the rest get their states (each reads the
    attended ones) but no token reads them, as padding masked out in a padded batch:
    ColBERT's query expansion with [MASK] tokens. None: every token."""

    input_ids: tuple[int, ...]
    token_type_ids: tuple[int, ...] | None = None
    extra: Any = None
    pixels: Pixels | None = None
    attended: int | None = None

    @property
    def length(self) -> int:
        """What the row costs a batch, in tokens: an image counts as one."""
        return 1 if self.pixels is not None else len(self.input_ids)


@dataclass(frozen=True)
class Prepared:
    """An item made ready: its rows, and whatever `finish` needs (`state`).

    `document_tokens`: a head that read a text longer than the window in chunks or windows
    (documents.py) says how many tokens the text had; the server refuses a text longer than
    --max-document-tokens, naming it."""

    rows: tuple[Row, ...]
    state: Any = None
    document_tokens: int = 0
    output_bytes: int = 0  # what the result will weigh on the wire, when the head knows it
    # before computing (many vectors per item): a call whose results would pass
    # --max-message-bytes is refused before any of it is computed


@dataclass(frozen=True)
class Features:
    """The shared backbone's outputs for one head's rows, padded to their longest row."""

    hidden: torch.Tensor  # [rows, tokens, hidden_size]; an image's feature map: positions
    attention_mask: torch.Tensor  # [rows, tokens], 1 for real tokens
    input_ids: torch.Tensor  # [rows, tokens]
    pooled: torch.Tensor | None = None  # image backbones: [rows, hidden_size], what the
    # checkpoint's own classifier reads
    intermediate: torch.Tensor | None = None  # the input of BackboneView.tail, when offered


@dataclass(frozen=True)
class OutputField:
    """One entry of a generic head's output schema.

    kind "value": `Output.fields[name]`, a JSON value whose shape `type` describes,
    e.g. "list<object{label:string,score:number,start:integer,end:integer}>".
    kind "tensor": `Output.tensors[name]`, a numpy array of element type `type`
    (float32, float16, int32 or int64) and dimensions `shape`, e.g. "[tokens, labels]".
    """

    name: str
    kind: Literal["value", "tensor"]
    type: str
    shape: str = ""
    description: str = ""
    optional: bool = False  # present only when an option asks for it


ParameterType = Literal["string", "number", "integer", "boolean"]


@dataclass(frozen=True)
class Parameter:
    """One option of a generic head; the server checks the type and fills the default."""

    name: str
    type: ParameterType
    default: Any
    description: str = ""
    choices: tuple[str, ...] = ()  # allowed values of a string option; empty: any


@dataclass(frozen=True)
class RunOptions:
    """A generic head's options for one request: every declared parameter, typed."""

    params: Mapping[str, Any]
    truncate: bool = False

    def __getitem__(self, name: str) -> Any:
        return self.params[name]


@dataclass(frozen=True)
class Output:
    """A generic head's result for one item, matching its `outputs` schema."""

    fields: Mapping[str, Any] = field(default_factory=dict)  # JSON-compatible values
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)


class Head(abc.ABC, Generic[ItemT, OptionsT, ResultT]):
    """A loaded head. Subclasses set the attributes and implement the three steps.

    Generic over the item, options and result types of its task: a classifier is a
    `Head[TextItem, ClassifyOptions, Classification]`, a generic head a
    `Head[TextItem, RunOptions, Output]`. A bare `Head` subclass (contract 1 as first
    published) is a `Head[Any, Any, Any]`. What `forward` returns per row is the head's own
    business: only its `finish` reads it.
    """

    task: ClassVar[str]
    name: str
    labels: tuple[str, ...] = ()
    trained: bool = True
    multi_label: bool = False
    source: str = ""
    detail: str = ""  # a note for GetModelInfo, e.g. why it is untrained
    # How it computes, for GetModelInfo and `headserve info`: e.g. {"pooling": "mean"} for an
    # encode head, {"activation": "sigmoid"} for a classifier (added in contract 1, optional)
    settings: Mapping[str, str] = {}  # noqa: RUF012 (read only: heads assign their own)
    # prepare and finish cost microseconds an item (the built-in heads): the server may run
    # them on its event loop for short items. Otherwise (the default) they run on a thread,
    # so a slow head cannot stall other calls (added in contract 1, optional)
    cheap: ClassVar[bool] = False
    # Generic heads only (tasks outside the built-in four): the output schema and options.
    outputs: tuple[OutputField, ...] = ()
    parameters: tuple[Parameter, ...] = ()

    @abc.abstractmethod
    def prepare(self, item: ItemT, options: OptionsT) -> Prepared:
        """Validate and tokenize one item; raise InvalidInput for bad input."""

    @abc.abstractmethod
    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[Any]:
        """Run on the shared hidden states; return one output per row (on the CPU)."""

    @abc.abstractmethod
    def finish(self, prepared: Prepared, outputs: Sequence[Any], options: OptionsT) -> ResultT:
        """Turn the outputs of an item's rows into its result (no tensors)."""


@runtime_checkable
class HeadPlugin(Protocol):
    """What an entry point in `headserve.heads` resolves to (a class is instantiated first).

    `task` must equal the `task` of the heads it loads: the server checks it at load.

    A plugin may also say which head options (`--head NAME=PLUGIN,key=value`) it reads, as a
    mapping `options` of each name to a line of help: a head configured with another is then
    refused at start, naming the option and these (`default` is the server's, always taken).
    Without `options` any is passed on unchecked."""

    task: str
    contract_version: int

    def load(self, context: LoadContext) -> Head[Any, Any, Any]:
        """Load the head's weights (from `context.source`) onto the backbone's device."""
        ...
