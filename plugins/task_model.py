"""Run a transformers task class's own head modules on the shared backbone's outputs.

A checkpoint of, say, `BertForSequenceClassification` is loaded whole, then its
base model (`model.bert`) is swapped for `SharedOutputs`, a stand-in that returns
the hidden states the shared backbone already computed. The task class's own
`forward` then runs unchanged: its pooler, dropout and classifier, with exactly
the maths of transformers, for every architecture the Auto classes know.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .contract import LoadContext

log = logging.getLogger(__name__)


@dataclass
class _Outputs(BaseModelOutputWithPooling):
    """What a base model returns, as encoders' task classes read it (the pooler's output)
    and decoders' (`cache`: none, the shared pass keeps no key-value cache)."""

    cache: Any = None


class SharedOutputs(nn.Module):
    """Stands in for a task model's base model; keeps the checkpoint's own pooler.

    The hidden states it returns are fed per thread: two model workers may run the same
    head on two batches at once.
    """

    def __init__(self, pooler: nn.Module | None) -> None:
        super().__init__()
        self.pooler = pooler
        self._fed = threading.local()

    @property
    def hidden(self) -> torch.Tensor | None:
        return getattr(self._fed, "hidden", None)

    @hidden.setter
    def hidden(self, value: torch.Tensor | None) -> None:
        self._fed.hidden = value

    def forward(self, *args: Any, **kwargs: Any) -> BaseModelOutputWithPooling:
        hidden = self.hidden
        if hidden is None:
            raise RuntimeError("SharedOutputs called outside feeding()")
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return _Outputs(last_hidden_state=hidden, pooler_output=pooled)


@dataclass
class TaskModel:
    """A task model whose base is the shared backbone, and what its checkpoint lacked."""

    model: nn.Module
    base: SharedOutputs
    missing: tuple[str, ...]  # head weights absent from the checkpoint (random)
    backbone_matches: bool
    declared: tuple[str, ...] = ()  # the checkpoint's architectures (its config.json)

    @property
    def foreign(self) -> str | None:
        """Why the checkpoint's head weights are not this task's (None: they are), by the
        architecture its config declares: a tensor name says nothing of what was trained
        (a ModernBERT classifier's `classifier.weight` fits its QA class too)."""
        own = type(self.model).__name__
        accepted = {own}
        if own.endswith("ForMaskedLM"):  # BERT's pre-training class holds the same LM head
            accepted.add(own.removesuffix("ForMaskedLM") + "ForPreTraining")
        if not self.declared:
            return f"its config.json declares no architecture (a {own} is needed)"
        if accepted.isdisjoint(self.declared):
            return f"its checkpoint is a {', '.join(self.declared)}, not a {own}"
        return None

    @property
    def trained(self) -> bool:
        """Whether the head's weights were trained for its task (not random, not another's)."""
        return not self.missing and self.foreign is None

    def untrained(self, weights: str) -> str:
        """GetModelInfo's detail for an untrained head; `weights` names them ("LM head")."""
        if self.missing:
            return f"{weights} weights missing from the checkpoint: " + ", ".join(self.missing)
        return f"{weights} weights not trained for this task: {self.foreign}"

    @property
    def config(self) -> PretrainedConfig:
        """The task model's configuration (labels, problem type...)."""
        config: PretrainedConfig = getattr(self.model, "config")  # noqa: B009 (nn.Module hides it)
        return config

    @contextlib.contextmanager
    def feeding(self, hidden: torch.Tensor) -> Iterator[nn.Module]:
        self.base.hidden = hidden
        try:
            yield self.model
        finally:
            self.base.hidden = None


def load_task_model(auto_class: Any, context: LoadContext, **config_overrides: Any) -> TaskModel:
    """Load `auto_class` from the head's source and put it on the shared backbone."""
    view = context.backbone
    if not view.allow_pickle and not any(context.source.glob("*.safetensors")):
        raise ValueError(
            f"{context.source} has no safetensors weights; pickle checkpoints are refused "
            "(they can run code when loaded) unless the server runs with --allow-pickle"
        )
    model, info = auto_class.from_pretrained(
        str(context.source),
        output_loading_info=True,
        dtype=view.dtype,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=not view.allow_pickle,
        **config_overrides,
    )
    prefix = model.base_model_prefix
    own_base = getattr(model, prefix)
    # A head loaded from the backbone's own folder has its weights by construction.
    same_folder = context.source.resolve() == view.source.resolve()
    backbone_matches = same_folder or _same_weights(own_base, view.module)
    base = SharedOutputs(_pooler(own_base))
    setattr(model, prefix, base)
    del own_base  # the checkpoint's copy of the backbone: the shared one serves instead
    _share_tied_embeddings(model, view.module, known_tied=same_folder)
    model.to(view.device).eval().requires_grad_(False)
    _own_storage(model, view.module)
    kept = {name for name, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    missing = tuple(sorted(k for k in info["missing_keys"] if k in kept))
    if not backbone_matches:
        log.warning(
            "head %s: the backbone weights in %s differ from the served backbone; "
            "its outputs will differ from that checkpoint's own",
            context.spec.name,
            context.source,
        )
    declared = tuple(getattr(model.config, "architectures", None) or ())
    return TaskModel(model, base, missing, backbone_matches, declared)


class _FirstTokenPooler(nn.Module):
    """ALBERT's pooling: its base model's `pooler` is a bare Linear, applied to the first token
    and followed by `pooler_activation` in the base model's forward."""

    def __init__(self, dense: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.dense = dense
        self.activation = activation

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.activation(self.dense(hidden[:, 0]))
        return pooled


def _pooler(base: nn.Module) -> nn.Module | None:
    """The base model's pooler as a module of the hidden states (what its forward computes)."""
    pooler = getattr(base, "pooler", None)
    activation = getattr(base, "pooler_activation", None)
    if isinstance(pooler, nn.Linear) and activation is not None:
        return _FirstTokenPooler(pooler, activation)
    return pooler


def _own_storage(model: nn.Module, shared: nn.Module) -> None:
    """Copy the head's tensors out of the checkpoint's memory map.

    Weights loaded from safetensors may be views of the mapped file; while any is alive
    the whole file (backbone included) can stay resident. A copy lets it go, once the
    checkpoint's own modules are collected: by the server, after the start's heads load and
    when it next goes idle. Not here: a full collection holds the GIL (0.2 s in a served
    process), which a head loaded into a running server would take from every call.
    """
    shared_ids = {id(p) for p in shared.parameters()}
    with torch.no_grad():
        for module in model.modules():
            for _name, param in list(module.named_parameters(recurse=False)):
                if id(param) not in shared_ids:
                    param.data = param.data.clone()
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None:
                    module.register_buffer(
                        name,
                        buffer.clone(),
                        persistent=name not in module._non_persistent_buffers_set,
                    )


def _same_weights(own: nn.Module, shared: nn.Module) -> bool:
    mine = own.state_dict()
    for name, tensor in shared.state_dict().items():
        other = mine.get(name)
        if other is None or other.shape != tensor.shape:
            return False
        if not torch.equal(other.to(tensor.device, tensor.dtype), tensor):
            return False
    return True


def _share_tied_embeddings(model: nn.Module, shared: nn.Module, *, known_tied: bool) -> None:
    """An output layer tied to the input embeddings points at the shared backbone's copy.

    `known_tied`: the head comes from the backbone's own folder and its config ties the
    weights, so they are the same stored tensor: no need to compare them, which would read
    the whole embedding matrix into memory at load for nothing.
    """
    output, inputs = _call(model, "get_output_embeddings"), _call(shared, "get_input_embeddings")
    if output is None or inputs is None or output.weight.shape != inputs.weight.shape:
        return
    tied = known_tied and bool(getattr(model.config, "tie_word_embeddings", False))
    if tied or torch.equal(
        output.weight.to(inputs.weight.device, inputs.weight.dtype), inputs.weight
    ):
        output.weight = inputs.weight


def _call(module: nn.Module, method: str) -> Any:
    """`module.method()` when the (transformers) module has that method, else None."""
    found = getattr(module, method, None)
    return found() if callable(found) else None
