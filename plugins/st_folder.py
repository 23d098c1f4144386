"""A sentence-transformers folder: what it runs after the transformer, as it declares it.

`modules.json` lists the modules in order. The encode head runs them as sentence-transformers
does: the Transformer (the shared backbone), then Pooling (cls, mean or lasttoken, the
prompt's tokens left out when `include_prompt` is false), any Dense layers, and Normalize.
A module, pooling mode or activation it cannot run exactly, or modules in another order,
refuse the head at load, naming what and where: serving a vector other than the one
sentence-transformers computes would be wrong silently. Prompts come from
`config_sentence_transformers.json`, the truncation length from `sentence_bert_config.json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .metadata import read_json

POOLINGS = ("cls", "mean", "lasttoken")
# Dense activations by the name sentence-transformers saves (its default is Tanh)
ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": torch.nn.Identity(),
    "torch.nn.modules.activation.Tanh": torch.nn.Tanh(),
    "torch.nn.modules.activation.ReLU": torch.nn.ReLU(),
    "torch.nn.modules.activation.GELU": torch.nn.GELU(),
    "torch.nn.modules.activation.Sigmoid": torch.nn.Sigmoid(),
}
# the flags of sentence-transformers before 6, by the mode each names
_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


class UnsupportedModule(ValueError):
    pass


@dataclass(frozen=True)
class Dense:
    """A Dense module: activation(pooled @ weight.T + bias)."""

    weight: torch.Tensor  # [out_features, in_features]
    bias: torch.Tensor | None
    activation: torch.nn.Module

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        out = vector @ self.weight.T
        if self.bias is not None:
            out = out + self.bias
        return self.activation(out)

    @classmethod
    def read(cls, folder: Path) -> Dense:
        config = read_json(folder / "config.json")
        name = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if name not in ACTIVATIONS:
            raise UnsupportedModule(
                f"{folder.name}: Dense activation {name!r} is not one headserve runs "
                f"({', '.join(a.rsplit('.', 1)[1] for a in ACTIVATIONS)})"
            )
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise UnsupportedModule(f"{folder.name}: a Dense module without model.safetensors")
        state = load_file(str(weights))
        weight = state["linear.weight"].float()
        expected = (int(config["out_features"]), int(config["in_features"]))
        if tuple(weight.shape) != expected:
            raise UnsupportedModule(
                f"{folder.name}: Dense weights of shape {tuple(weight.shape)}, its config says "
                f"{expected}"
            )
        bias = state.get("linear.bias")
        return cls(weight, None if bias is None else bias.float(), ACTIVATIONS[name])


def _pooling(config: Mapping[str, object], where: str) -> str:
    mode = config.get("pooling_mode")  # sentence-transformers 6; before: one flag per mode
    modes = [mode] if isinstance(mode, str) else list(mode or ())  # type: ignore[call-overload]
    modes += [m for flag, m in _FLAGS.items() if config.get(flag)]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise UnsupportedModule(
            f"{where}: pooling {'+'.join(modes) or 'none'} is not one headserve runs "
            f"({', '.join(POOLINGS)})"
        )
    return modes[0]


@dataclass(frozen=True)
class SentenceTransformersConfig:
    """What a sentence-transformers folder declares for encoding (defaults: a plain folder)."""

    pooling: str = "cls"
    normalize: bool = False
    include_prompt: bool = True  # its pooling counts a prompt's tokens
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    max_seq_length: int | None = None  # where it cuts a long input (sentence_bert_config.json)
    dense: tuple[Dense, ...] = ()  # after pooling, before Normalize

    @property
    def dimensions(self) -> int | None:
        """The vector's size when a Dense module sets it (None: the backbone's hidden size)."""
        return int(self.dense[-1].weight.shape[0]) if self.dense else None

    @classmethod
    def read(cls, folder: Path) -> SentenceTransformersConfig:
        modules = folder / "modules.json"
        if not modules.exists():
            return cls()
        pooling, normalize, include_prompt = "cls", False, True
        dense: list[Dense] = []
        order: list[str] = []
        for module in read_json(modules):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            where = f"{modules.name} module {module.get('idx', len(order))} ({kind})"
            if kind == "Transformer":
                order.append("Transformer")
            elif kind == "Pooling":
                config = read_json(folder / module["path"] / "config.json")
                pooling = _pooling(config, where)
                include_prompt = bool(config.get("include_prompt", True))
                order.append("Pooling")
            elif kind == "Dense":
                dense.append(Dense.read(folder / module["path"]))
                order.append("Dense")
            elif kind == "Normalize":
                normalize = True
                order.append("Normalize")
            else:
                raise UnsupportedModule(
                    f"{where}: a module headserve does not run (it runs Transformer, Pooling, "
                    "Dense and Normalize)"
                )
        expected = ["Transformer", "Pooling", *["Dense"] * len(dense)]
        expected += ["Normalize"] if normalize else []
        if order and order != expected:  # an empty list declares nothing
            raise UnsupportedModule(
                f"{modules.name}: modules in the order {' > '.join(order)}; headserve runs "
                "Transformer > Pooling > Dense... > Normalize"
            )
        settings = folder / "config_sentence_transformers.json"
        declared = read_json(settings) if settings.exists() else {}
        bert = folder / "sentence_bert_config.json"
        window = read_json(bert).get("max_seq_length") if bert.exists() else None
        return cls(
            pooling,
            normalize,
            include_prompt,
            dict(declared.get("prompts") or {}),
            declared.get("default_prompt_name") or None,
            int(window) if window else None,
            tuple(dense),
        )
