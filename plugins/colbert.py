"""The `colbert` head: late interaction (ColBERT), run as PyLate runs a checkpoint it saved.

The PyLate folder is the backbone (PyLate resized its embeddings for the [Q] and [D] marker
tokens); this head reads what PyLate saved beside it: `config_sentence_transformers.json`
(the markers, the query and document lengths, query expansion, the skiplist) and the Dense
projection(s) (`pylate.models.Dense.Dense` in `modules.json`, 128 dimensions or what they
declare). An item is a document, or with `prompt_name="query"` a query:

- a query: its tokens (at most query_length - 1, with the special tokens), the [Q] marker
  after the first, and [MASK] up to query_length (query expansion); the [MASK] tokens are read
  out but attended by none (Row.attended), unless the checkpoint attends to them. Every
  position's vector is returned.
- a document: its tokens (at most document_length - 1), the [D] marker after the first; the
  vectors of the skiplist's tokens (punctuation) are left out, as PyLate leaves them out.

Each vector goes through the Dense layers and is L2-normalised; Encode returns them in
`token_states`, with their tokens. Rerank scores a document by MaxSim: for every query
vector its best dot product with the document's vectors, summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .contract import CONTRACT_VERSION, Features, Head, InvalidInput, LoadContext, Prepared, Row
from .metadata import read_json
from .st_folder import ACTIVATIONS, Dense, UnsupportedModule
from .tasks import Embedding, EncodeOptions, TextItem
from .text import check_text

PYLATE_DENSE = "pylate.models.Dense.Dense"
MODES = ("query", "document")


@dataclass(frozen=True)
class ColbertConfig:
    """What PyLate saved beside the backbone."""

    query_prefix: str
    document_prefix: str
    query_length: int
    document_length: int
    query_expansion: bool
    attend_to_expansion: bool
    skiplist: tuple[str, ...]
    dense: tuple[Dense, ...]

    @classmethod
    def read(cls, folder: Path) -> ColbertConfig:
        settings = read_json(folder / "config_sentence_transformers.json")
        if not settings or "query_prefix" not in settings:
            raise UnsupportedModule(
                f"{folder}: no ColBERT settings in config_sentence_transformers.json "
                "(query_prefix, query_length...): is it a folder PyLate saved?"
            )
        return cls(
            query_prefix=str(settings["query_prefix"]),
            document_prefix=str(settings["document_prefix"]),
            query_length=int(settings["query_length"]),
            document_length=int(settings["document_length"]),
            query_expansion=bool(settings.get("do_query_expansion", True)),
            attend_to_expansion=bool(settings.get("attend_to_expansion_tokens", False)),
            skiplist=tuple(settings.get("skiplist_words") or ()),
            dense=_dense_layers(folder),
        )


def _dense_layers(folder: Path) -> tuple[Dense, ...]:
    layers = []
    for module in read_json(folder / "modules.json") or []:
        if module.get("type") != PYLATE_DENSE:
            continue
        where = folder / module["path"]
        config = read_json(where / "config.json") or {}
        if config.get("use_residual"):
            raise UnsupportedModule(f"{where}: a Dense with use_residual is not supported")
        name = config.get("activation_function", "torch.nn.modules.linear.Identity")
        if name not in ACTIVATIONS:
            raise UnsupportedModule(f"{where}: activation {name} is not supported")
        weights = load_file(where / "model.safetensors")
        layers.append(Dense(weights["linear.weight"].float(), _bias(weights), ACTIVATIONS[name]))
    if not layers:
        raise UnsupportedModule(f"{folder}: modules.json names no {PYLATE_DENSE}")
    return tuple(layers)


def _bias(weights: dict[str, torch.Tensor]) -> torch.Tensor | None:
    bias = weights.get("linear.bias")
    return bias.float() if bias is not None else None


class ColbertHead(Head[TextItem, EncodeOptions, Embedding]):
    task = "encode"
    cheap = True  # microseconds an item: inline for short items (core.py)
    rerank_score = "maxsim"

    def __init__(self, context: LoadContext) -> None:
        backbone = context.backbone
        if backbone.modality != "text" or backbone.kind != "transformers-text":
            raise ValueError(
                f"a ColBERT head needs the built-in text backbone, not {backbone.kind!r}"
            )
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = backbone
        score = context.spec.options.get("rerank_score", "maxsim")
        if score != "maxsim":
            raise ValueError(f"rerank_score={score!r}: a ColBERT head ranks by maxsim")
        self.config = config = ColbertConfig.read(context.source)
        tokenizer = backbone.tokenizer
        self._prefix = {
            "query": _token_id(tokenizer, config.query_prefix),
            "document": _token_id(tokenizer, config.document_prefix),
        }
        self._mask = tokenizer.mask_token_id
        if self._mask is None:
            raise ValueError("a ColBERT head pads queries with [MASK]: the tokenizer has none")
        self._skip = {tokenizer.convert_tokens_to_ids(word) for word in config.skiplist}
        self.dimensions = int(config.dense[-1].weight.shape[0])
        self.settings = {
            "dimensions": str(self.dimensions),
            "query_length": str(config.query_length),
            "document_length": str(config.document_length),
            "rerank_score": self.rerank_score,
        }
        self.detail = (
            f"ColBERT: {self.dimensions}-dimensional token vectors; queries of "
            f"{config.query_length} tokens, documents of at most {config.document_length}; "
            "prompt_name query or document (the default); Rerank by MaxSim"
        )

    def prepare(self, item: TextItem, options: EncodeOptions) -> Prepared:
        for name, given in (
            ("options.pooling", options.pooling not in ("default", "none")),
            ("options.dimensions", options.dimensions != 0),
            ("options.prompt", options.prompt is not None),
            ("options.chunk_mode", options.chunk_mode != "none"),
            ("options.sparse_top_k", options.sparse_top_k != 0),
        ):
            if given:
                raise InvalidInput(name, f"not for a ColBERT head ({self.name!r})")
        mode = options.prompt_name or "document"
        if mode not in MODES:
            raise InvalidInput(
                "options.prompt_name", f"{mode!r}: a ColBERT head reads a query or a document"
            )
        check_text("text", item.text)
        if item.text_pair is not None:
            raise InvalidInput("text_pair", "a ColBERT head reads one text")
        query = mode == "query"
        length = self.config.query_length if query else self.config.document_length
        tokenizer = self._backbone.tokenizer
        text = item.text.strip()  # as sentence-transformers tokenizes
        ids = list(tokenizer(text)["input_ids"])
        if len(ids) > length - 1:
            if not options.truncate:
                raise InvalidInput(
                    "text",
                    f"is {len(ids)} tokens, more than this head's {mode}s take ({length - 1}, "
                    "and the marker); shorten it or set options.truncate",
                )
            ids = list(tokenizer(text, truncation=True, max_length=length - 1)["input_ids"])
        ids.insert(1, self._prefix[mode])
        attended = None
        if query and self.config.query_expansion:
            if not self.config.attend_to_expansion:
                attended = len(ids)
            ids += [self._mask] * (length - len(ids))
        keep = (
            list(range(len(ids)))
            if query
            else [i for i, token in enumerate(ids) if token not in self._skip]
        )
        row = Row(tuple(ids), (0,) * len(ids), attended=attended)
        tokens = tuple(tokenizer.convert_ids_to_tokens([ids[i] for i in keep]))
        weight = len(keep) * self.dimensions * 4 + sum(len(t) + 2 for t in tokens)
        return Prepared((row,), state=(keep, tokens), output_bytes=weight)

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        vectors = features.hidden.float()
        for dense in self.config.dense:
            vectors = dense(vectors)
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return [vectors[i, : len(row.input_ids)].cpu() for i, row in enumerate(rows)]

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: EncodeOptions
    ) -> Embedding:
        (vectors,) = outputs
        keep, tokens = prepared.state
        return Embedding(None, vectors[keep].numpy(), tokens)


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """ColBERT's late interaction: each query vector's best dot product with the document's,
    summed over the query's vectors."""
    return float((query @ document.T).max(axis=1).sum())


def _token_id(tokenizer, token: str) -> int:  # type: ignore[no-untyped-def]
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or found == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token!r} marker token")
    return int(found)


class ColbertPlugin:
    task = "encode"
    contract_version = CONTRACT_VERSION
    options = {"rerank_score": "maxsim (the default, and the only one): how Rerank scores"}

    def load(self, context: LoadContext) -> ColbertHead:
        return ColbertHead(context)
