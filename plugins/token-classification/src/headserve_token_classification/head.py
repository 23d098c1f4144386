"""The head: a `...ForTokenClassification` checkpoint's classifier on the shared backbone.

headserve runs the backbone; this head runs the checkpoint's own dropout and
classifier (transformers' code, through headserve.plugins.task_model) on the
hidden states of its rows, then turns per-token scores into entities. A text longer
than the window is read in windows (headserve.plugins.documents.TokenWindows) and its
entities carry offsets into the whole text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModelForTokenClassification

from headserve.plugins.contract import (
    CONTRACT_VERSION,
    Features,
    Head,
    InvalidInput,
    LoadContext,
    Output,
    OutputField,
    Parameter,
    Prepared,
    Row,
    RunOptions,
)
from headserve.plugins.documents import TokenWindows
from headserve.plugins.task_model import load_task_model
from headserve.plugins.tasks import TextItem
from headserve.plugins.text import encode_text

from . import entities

ENTITY = "object{label:string,score:number,start:integer,end:integer,text:string}"


class TokenClassificationHead(Head):
    task = "token_classification"
    outputs = (
        OutputField(
            "entities",
            "value",
            f"list<{ENTITY}>",
            description="entities in text order; start/end are code points of the text",
        ),
        OutputField("tokens", "value", "integer", description="tokens the text became"),
        OutputField(
            "logits",
            "tensor",
            "float32",
            shape="[tokens, labels]",
            description="the classifier's logits per token, special tokens included (a "
            "text longer than the window: its own tokens only)",
            optional=True,
        ),
    )
    parameters = (
        Parameter(
            "aggregation",
            "string",
            "simple",
            "simple: merge the tokens of one entity; none: one entity per token",
            choices=("simple", "none"),
        ),
        Parameter("ignore_labels", "string", "O", "comma-separated labels that are not entities"),
        Parameter("return_logits", "boolean", False, "also return the logits tensor"),
    )

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        self._model = load_task_model(AutoModelForTokenClassification, context)
        config = self._model.model.config
        self.labels = tuple(config.id2label[i] for i in range(config.num_labels))
        self.trained = self._model.trained
        if not self.trained:
            self.detail = self._model.untrained("token classifier")

    def prepare(self, item: TextItem, options: RunOptions) -> Prepared:
        if item.text_pair is not None:
            raise InvalidInput("text_pair", "token classification takes a single text")
        row, encoding = encode_text(self._backbone, item, truncate=options.truncate, limit=False)
        if len(row.input_ids) > self._backbone.max_length:  # a long text: read in windows
            return self._windows(item.text)
        keep = [s is not None for s in encoding.sequence_ids()]  # False: special tokens
        offsets = [(int(a), int(b)) for a, b in encoding["offset_mapping"]]
        return Prepared((row,), state=(item.text, offsets, keep))

    def _windows(self, text: str) -> Prepared:
        """A text longer than the window, in windows half a window apart; each token's logits
        come from the window where it sits nearest the middle (documents.TokenWindows), so
        an entity in two windows' overlap is found once."""
        windows = TokenWindows.read(self._backbone.tokenizer, text, self._backbone.max_length)
        document = windows.document
        state = (text, list(document.offsets), [True] * len(document), windows)
        return Prepared(windows.rows(), state, document_tokens=len(document))

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        with self._model.feeding(features.hidden) as model:
            logits = model(
                input_ids=features.input_ids, attention_mask=features.attention_mask
            ).logits.float()
        return [logits[i, : len(row.input_ids)].cpu() for i, row in enumerate(rows)]

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: RunOptions
    ) -> Output:
        text, offsets, keep, *windows = prepared.state
        logits = torch.stack(windows[0].stitch(outputs)) if windows else outputs[0]
        probs = logits.softmax(-1).numpy()
        found = entities.tokens(probs, self.labels, offsets, keep)
        ignore = [label.strip() for label in options["ignore_labels"].split(",")]
        fields = {
            "entities": entities.entities(
                found, aggregation=options["aggregation"], ignore=ignore, text=text
            ),
            "tokens": len(offsets),
        }
        tensors = {"logits": logits.numpy().astype(np.float32)} if options["return_logits"] else {}
        return Output(fields, tensors)


class TokenClassificationPlugin:
    task = "token_classification"
    contract_version = CONTRACT_VERSION

    def load(self, context: LoadContext) -> TokenClassificationHead:
        return TokenClassificationHead(context)
