"""The `encode` head: embeddings straight from the shared backbone (no weights of its own).

Pooling: CLS (first token), MEAN (over real tokens), the last token (decoder embedders) or
NONE (every token's state). The default follows a sentence-transformers checkpoint's own
modules when the folder has them (st_folder.py: its Pooling, Dense layers and Normalize, run
as sentence-transformers runs them), else CLS without normalisation. Prompts ("query: ") are
the folder's named ones (config_sentence_transformers.json) or a call's own, put before the
text; a pooling that excludes them (include_prompt false) leaves their tokens out, as
sentence-transformers does. `dimensions` keeps a vector's first N values (Matryoshka).
`truncate` cuts at the folder's max_seq_length (sentence_bert_config.json), where
sentence-transformers cuts, when that is shorter than the model's window.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import chunked
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
from .st_folder import POOLINGS, SentenceTransformersConfig
from .tasks import Embedding, EncodeOptions, TextItem
from .text import encode_text


@dataclass(frozen=True)
class Pooled:
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
        self.backbone = context.backbone
        declared = SentenceTransformersConfig.read(context.source)
        options = context.spec.options
        self.default_pooling = options.get("pooling", declared.pooling)
        self.default_normalize = options.get("normalize", str(declared.normalize)).lower() in {
            "1",
            "true",
            "yes",
        }
        if self.default_pooling not in (*POOLINGS, "none"):
            raise ValueError(
                f"pooling={self.default_pooling!r}: choose {', '.join(POOLINGS)} or none"
            )
        self.dense = declared.dense
        self.dimensions = declared.dimensions or context.backbone.hidden_size
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
        self._prompt_ids = functools.lru_cache(maxsize=256)(self._tokenize_prompt)
        self.settings = {
            "pooling": self.default_pooling,
            "normalize": str(self.default_normalize).lower(),
        }
        self.detail = f"default pooling {self.default_pooling}, normalize {self.default_normalize}"
        if self.dense:
            self.detail += f", {len(self.dense)} Dense to {self.dimensions} dimensions"
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
        tokenizer = self.backbone.tokenizer
        ids = tokenizer(prompt)["input_ids"]
        return len(ids) - (1 if ids and ids[-1] in tokenizer.all_special_ids else 0)

    def prompt_ids(self, prompt: str) -> tuple[int, ...]:
        """The prompt's tokens alone, without special tokens (a chunked text's rows begin with
        them)."""
        return self._prompt_ids(prompt) if prompt else ()

    def _tokenize_prompt(self, prompt: str) -> tuple[int, ...]:
        return tuple(self.backbone.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def prepare(self, item: TextItem, options: EncodeOptions) -> Prepared:
        for name, given in (
            ("options.sparse_top_k", options.sparse_top_k),
            ("options.sparse_min_weight", options.sparse_min_weight),
        ):
            if given:
                raise InvalidInput(name, f"for a sparse head: {self.name!r} is dense")
        pooling = self.default_pooling if options.pooling == "default" else options.pooling
        if options.dimensions > self.dimensions:
            raise InvalidInput(
                "options.dimensions",
                f"{options.dimensions} is more than the model's {self.dimensions} dimensions",
            )
        prompt = self.prompt(options)
        pooled = Pooled(pooling, options.normalize, self.prompt_tokens(prompt), options.dimensions)
        if options.chunk_mode != "none":
            return chunked.prepare(self, item, options, pooled, prompt)
        text = TextItem(prompt + item.text, item.text_pair) if prompt else item
        row, encoding = encode_text(
            self.backbone,
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
        skipped = [getattr(row.extra, "prompt_tokens", 0) for row in rows]
        if any(skipped):  # a prompt left out of pooling: as sentence-transformers masks it
            mask = mask.clone()
            for i, count in enumerate(skipped):
                mask[i, :count] = 0
        mean = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        outputs = []
        for i, row in enumerate(rows):
            if isinstance(row.extra, chunked.Window):  # late chunking: a vector per chunk
                vectors = chunked.window_vectors(hidden[i], row)
                for dense in self.dense:
                    vectors = dense(vectors)
                outputs.append(self._finish_vector(vectors, row.extra.pooled).cpu())
                continue
            asked: Pooled = row.extra
            if asked.pooling == "none":
                outputs.append(hidden[i, : len(row.input_ids)].cpu())
                continue
            if asked.pooling == "cls":
                vector = hidden[i, asked.prompt_tokens]
            elif asked.pooling == "lasttoken":  # the last real token, wherever padding is
                vector = hidden[i, int(features.attention_mask[i].nonzero().max())]
            else:
                vector = mean[i]
            for dense in self.dense:  # the folder's Dense modules, in order
                vector = dense(vector)
            outputs.append(self._finish_vector(vector, asked).cpu())
        return outputs

    def unit(self, asked: Pooled) -> bool:
        """Whether `_finish_vector` makes unit vectors for `asked`."""
        if asked.dimensions:
            return bool(asked.normalize)
        return self.default_normalize if asked.normalize is None else asked.normalize

    def _finish_vector(self, vector: torch.Tensor, asked: Pooled) -> torch.Tensor:
        """Normalised and cut as asked. Without `dimensions`: normalised if the call (or else
        the head's default) says so. With it: a head that normalises by default does so before
        the cut (its Normalize module, as sentence-transformers' truncate_dim), and the cut
        vector is normalised again only if the call asks."""
        normalize = self.default_normalize if asked.normalize is None else asked.normalize
        if not asked.dimensions:
            return torch.nn.functional.normalize(vector, dim=-1) if normalize else vector
        if asked.normalize is None and self.default_normalize:
            vector = torch.nn.functional.normalize(vector, dim=-1)
        vector = vector[..., : asked.dimensions]
        return torch.nn.functional.normalize(vector, dim=-1) if asked.normalize else vector

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: EncodeOptions
    ) -> Embedding:
        if isinstance(prepared.state, chunked.Chunked):
            return chunked.finish(prepared.state, outputs)
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
