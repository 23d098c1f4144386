"""The `encode` head: embeddings straight from the shared backbone (no weights of its own).

Pooling: CLS (first token), MEAN (over real tokens) or NONE (every token's
state). The default follows a sentence-transformers checkpoint's own
`1_Pooling/config.json` and `2_Normalize` module when the folder has them, else CLS
without normalisation. Prompts ("query: ") are the folder's named ones
(config_sentence_transformers.json) or a call's own, put before the text; a pooling
that excludes them (include_prompt false) leaves their tokens out, as
sentence-transformers does. `dimensions` keeps a vector's first N values (Matryoshka).
`truncate` cuts at the folder's max_seq_length (sentence_bert_config.json), where
sentence-transformers cuts, when that is shorter than the model's window.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .contract import (
    CONTRACT_VERSION,
    Features,
    Head,
    InvalidInput,
    LoadContext,
    Prepared,
    Row,
)
from .image_heads import ImageEncodeHead
from .metadata import read_json
from .tasks import Embedding, EncodeOptions, TextItem
from .text import encode_text


@dataclass(frozen=True)
class SentenceTransformersConfig:
    """What a sentence-transformers folder declares for encoding (defaults: a plain folder)."""

    pooling: str = "cls"
    normalize: bool = False
    include_prompt: bool = True  # its pooling counts a prompt's tokens
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    max_seq_length: int | None = None  # where it cuts a long input (sentence_bert_config.json)

    @classmethod
    def read(cls, folder: Path) -> SentenceTransformersConfig:
        modules = folder / "modules.json"
        if not modules.exists():
            return cls()
        pooling, normalize, include_prompt = "cls", False, True
        for module in read_json(modules):
            kind = module.get("type", "")
            if kind.endswith("Normalize"):
                normalize = True
            elif kind.endswith("Pooling"):
                config = read_json(folder / module["path"] / "config.json")
                mode = config.get("pooling_mode")  # sentence-transformers 6; older: flags
                modes = [mode] if isinstance(mode, str) else list(mode or ())
                if "mean" in modes or config.get("pooling_mode_mean_tokens"):
                    pooling = "mean"
                include_prompt = bool(config.get("include_prompt", True))
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
        )


@dataclass(frozen=True)
class _Pooled:
    """How one row is pooled (its Row.extra)."""

    pooling: str
    normalize: bool | None  # asked of the call; None: the head's default
    prompt_tokens: int  # leading tokens left out of pooling (a prompt the pooling excludes)
    dimensions: int  # 0: all


class EncodeHead(Head[TextItem, EncodeOptions, Embedding]):
    task = "encode"
    cheap = True  # microseconds an item: inline for short items (core.py)

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        declared = SentenceTransformersConfig.read(context.source)
        options = context.spec.options
        self.default_pooling = options.get("pooling", declared.pooling)
        self.default_normalize = options.get("normalize", str(declared.normalize)).lower() in {
            "1",
            "true",
            "yes",
        }
        if self.default_pooling not in {"cls", "mean", "none"}:
            raise ValueError(f"pooling={self.default_pooling!r}: choose cls, mean or none")
        self.cut_at = declared.max_seq_length
        self.prompts = declared.prompts
        self.include_prompt = declared.include_prompt
        self.default_prompt_name = options.get("default_prompt_name", declared.default_prompt_name)
        if self.default_prompt_name and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default prompt {self.default_prompt_name!r} is not one of the checkpoint's "
                f"prompts ({', '.join(sorted(self.prompts)) or 'it names none'})"
            )
        # counted once per prompt; calls may write any prompt, so the cache is bounded
        self._count_prompt_tokens = functools.lru_cache(maxsize=256)(self._count_tokens)
        self.settings = {
            "pooling": self.default_pooling,
            "normalize": str(self.default_normalize).lower(),
        }
        self.detail = f"default pooling {self.default_pooling}, normalize {self.default_normalize}"
        if self.prompts:
            self.detail += f", prompts {', '.join(sorted(self.prompts))}"
        if self.default_prompt_name:
            self.detail += f" (default {self.default_prompt_name})"

    def prompt(self, options: EncodeOptions) -> str:
        """The prompt a call asks for (or the default), "" for none."""
        if options.prompt is not None:
            return options.prompt
        name = options.prompt_name or self.default_prompt_name
        if not name:
            return ""
        if name not in self.prompts:
            named = ", ".join(sorted(self.prompts)) or "none"
            raise InvalidInput(
                "options.prompt_name", f"unknown prompt {name!r}; this head's: {named}"
            )
        return self.prompts[name]

    def prompt_tokens(self, prompt: str) -> int:
        """The tokens of `prompt` that pooling leaves out, counted as sentence-transformers
        does: the prompt tokenized alone, less a special token it ends with."""
        if not prompt or self.include_prompt:
            return 0
        return self._count_prompt_tokens(prompt)

    def _count_tokens(self, prompt: str) -> int:
        tokenizer = self._backbone.tokenizer
        ids = tokenizer(prompt)["input_ids"]
        return len(ids) - (1 if ids and ids[-1] in tokenizer.all_special_ids else 0)

    def prepare(self, item: TextItem, options: EncodeOptions) -> Prepared:
        for name, given in (
            ("options.sparse_top_k", options.sparse_top_k),
            ("options.sparse_min_weight", options.sparse_min_weight),
        ):
            if given:
                raise InvalidInput(name, f"for a sparse head: {self.name!r} is dense")
        pooling = self.default_pooling if options.pooling == "default" else options.pooling
        hidden = self._backbone.hidden_size
        if options.dimensions > hidden:
            raise InvalidInput(
                "options.dimensions",
                f"{options.dimensions} is more than the model's {hidden} dimensions",
            )
        prompt = self.prompt(options)
        pooled = _Pooled(pooling, options.normalize, self.prompt_tokens(prompt), options.dimensions)
        text = TextItem(prompt + item.text, item.text_pair) if prompt else item
        row, encoding = encode_text(
            self._backbone,
            text,
            truncate=options.truncate,
            extra=pooled,
            truncation_side=options.truncation_side,
            cut_at=self.cut_at,
        )
        return Prepared((row,), state=tuple(encoding.tokens()) if pooling == "none" else ())

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        hidden = features.hidden.float()
        mask = features.attention_mask.to(hidden.dtype)
        skipped = [row.extra.prompt_tokens for row in rows]
        if any(skipped):  # a prompt left out of pooling: as sentence-transformers masks it
            mask = mask.clone()
            for i, count in enumerate(skipped):
                mask[i, :count] = 0
        mean = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        outputs = []
        for i, row in enumerate(rows):
            asked: _Pooled = row.extra
            if asked.pooling == "none":
                outputs.append(hidden[i, : len(row.input_ids)].cpu())
                continue
            vector = hidden[i, asked.prompt_tokens] if asked.pooling == "cls" else mean[i]
            outputs.append(self._finish_vector(vector, asked).cpu())
        return outputs

    def _finish_vector(self, vector: torch.Tensor, asked: _Pooled) -> torch.Tensor:
        """Normalised and cut as asked. Without `dimensions`: normalised if the call (or else
        the head's default) says so. With it: a head that normalises by default does so before
        the cut (its Normalize module, as sentence-transformers' truncate_dim), and the cut
        vector is normalised again only if the call asks."""
        normalize = self.default_normalize if asked.normalize is None else asked.normalize
        if not asked.dimensions:
            return torch.nn.functional.normalize(vector, dim=-1) if normalize else vector
        if asked.normalize is None and self.default_normalize:
            vector = torch.nn.functional.normalize(vector, dim=-1)
        vector = vector[: asked.dimensions]
        return torch.nn.functional.normalize(vector, dim=-1) if asked.normalize else vector

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: EncodeOptions
    ) -> Embedding:
        (output,) = outputs
        if prepared.rows[0].extra.pooling == "none":
            return Embedding(None, output.numpy(), prepared.state)
        return Embedding(output.numpy())


class EncodePlugin:
    task = "encode"
    contract_version = CONTRACT_VERSION
    options = {
        "pooling": "cls, mean or none (default: the sentence-transformers folder's own)",
        "normalize": "true: unit-length vectors",
        "default_prompt_name": "the checkpoint's prompt for requests that name none",
    }

    def load(self, context: LoadContext) -> EncodeHead | ImageEncodeHead:
        if context.backbone.modality == "image":
            return ImageEncodeHead(context)
        return EncodeHead(context)
