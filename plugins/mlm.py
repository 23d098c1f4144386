"""The `mlm` head: masked-token predictions by a `...ForMaskedLM` checkpoint's LM head.

Only the rows' mask positions go through the LM head (it works token by token),
unless the caller asks for the full logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForMaskedLM

from .contract import CONTRACT_VERSION, Features, Head, InvalidInput, LoadContext, Prepared, Row
from .image_heads import refuse_images
from .task_model import load_task_model
from .tasks import Candidate, MaskPrediction, PredictOptions, TextItem, TokenPrediction
from .text import encode_text


class MaskedLMHead(Head[TextItem, PredictOptions, TokenPrediction]):
    task = "mlm"
    cheap = True  # microseconds an item: inline for short items (core.py)

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        self._tokenizer = context.backbone.tokenizer
        self._model = load_task_model(AutoModelForMaskedLM, context)
        self.trained = self._model.trained
        if not self.trained:
            self.detail = self._model.untrained("LM head")
        mask = self._tokenizer.mask_token
        if mask is None:
            raise ValueError("the tokenizer has no mask token")
        self.mask_token: str = mask
        self.mask_id: int = self._tokenizer.mask_token_id

    def prepare(self, item: TextItem, options: PredictOptions) -> Prepared:
        row, encoding = encode_text(self._backbone, item, truncate=options.truncate)
        positions = tuple(i for i, t in enumerate(row.input_ids) if t == self.mask_id)
        if not positions:
            raise InvalidInput("text", f"holds no mask token {self.mask_token!r}")
        offsets = encoding["offset_mapping"]
        spans = tuple((int(offsets[p][0]), int(offsets[p][1])) for p in positions)
        row = Row(row.input_ids, row.token_type_ids, (positions, options.return_logits))
        return Prepared((row,), state=(positions, spans))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        # Gather the positions each row needs into one sequence for the LM head.
        picks: list[torch.Tensor] = []
        for i, row in enumerate(rows):
            positions, full = row.extra
            picks.append(
                features.hidden[i, : len(row.input_ids)]
                if full
                else features.hidden[i, list(positions)]
            )
        gathered = torch.cat(picks).unsqueeze(0)
        dummy_ids = torch.zeros(gathered.shape[:2], dtype=torch.long, device=gathered.device)
        with self._model.feeding(gathered) as model:
            logits = model(input_ids=dummy_ids).logits[0].float().cpu()
        return list(torch.split(logits, [len(p) for p in picks]))

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: PredictOptions
    ) -> TokenPrediction:
        (logits,) = outputs
        positions, spans = prepared.state
        at_masks = logits[list(positions)] if options.return_logits else logits
        probs = at_masks.softmax(-1)
        top = probs.topk(min(options.top_k, probs.shape[-1]), dim=-1)
        masks = []
        for k, (position, span) in enumerate(zip(positions, spans, strict=True)):
            ids = top.indices[k].tolist()
            tokens = self._tokenizer.convert_ids_to_tokens(ids)
            candidates = tuple(
                Candidate(int(t), str(s), float(p))
                for t, s, p in zip(ids, tokens, top.values[k].tolist(), strict=True)
            )
            masks.append(MaskPrediction(position, span, candidates))
        return TokenPrediction(tuple(masks), logits.numpy() if options.return_logits else None)


class MaskedLMPlugin:
    task = "mlm"
    contract_version = CONTRACT_VERSION
    options: dict[str, str] = {}

    def load(self, context: LoadContext) -> MaskedLMHead:
        refuse_images(context, self.task)
        return MaskedLMHead(context)
