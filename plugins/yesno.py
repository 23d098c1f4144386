"""The `yesno` head: a causal language model's judgement of a (query, document) pair.

Rerankers such as Qwen3-Reranker are causal LMs asked, in a prompt, whether a document meets a
query: a pair's relevance is the probability that the next token is "yes" rather than "no",
the softmax over those two tokens' logits (their difference is the log-odds). The head reads
the checkpoint's LM head rows for the two tokens on the backbone's last real token, so the
shared pass serves it like any other head. The prompt template, its instruction and the two
tokens are head options, with Qwen3-Reranker's published defaults (a template is easier to
write in a --config TOML table than in --head, whose options are split at commas).

It is a classify head with the labels ("no", "yes"): Classify answers both probabilities (and
each label's logit), and Rerank ranks by the "yes" probability, a two-label head's default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM

from .classify import CLASSIFY_OPTIONS, ranking_score, relevance
from .contract import CONTRACT_VERSION, Features, Head, InvalidInput, LoadContext, Prepared, Row
from .scores import activation, classified
from .task_model import load_task_model
from .tasks import Classification, ClassifyOptions, TextItem
from .text import check_text, encode_text

QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
QWEN3_RERANKER_INSTRUCTION = (
    "Given a web search query, retrieve relevant passages that answer the query"
)
LABELS = ("no", "yes")
_FIELD = re.compile(r"\{(instruction|query|document)\}")


class YesNoHead(Head[TextItem, ClassifyOptions, Classification]):
    task = "classify"

    def __init__(self, context: LoadContext) -> None:
        self.name = context.spec.name
        self.source = str(context.source)
        self._backbone = context.backbone
        options = context.spec.options
        self.template = options.get("template", QWEN3_RERANKER_TEMPLATE)
        self.instruction = options.get("instruction", QWEN3_RERANKER_INSTRUCTION)
        for field in ("{query}", "{document}"):
            if field not in self.template:
                raise ValueError(f"template: it has no {field} field")
        tokenizer = context.backbone.tokenizer
        tokens = (options.get("no", "no"), options.get("yes", "yes"))
        ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
        for token, id_ in zip(tokens, ids, strict=True):
            if id_ is None or id_ == tokenizer.unk_token_id:
                raise ValueError(f"{token!r} is not one token of the backbone's vocabulary")
        self._model = load_task_model(AutoModelForCausalLM, context)
        lm_head = getattr(self._model.model, "lm_head", None)  # the shared base has no embeddings
        if not isinstance(lm_head, torch.nn.Linear):
            raise ValueError(f"{context.source}: its causal LM has no lm_head layer")
        self._weight = lm_head.weight[ids].detach().float()  # [2, hidden]: no's row, yes's
        bias = getattr(lm_head, "bias", None)
        self._bias = None if bias is None else bias[ids].detach().float()
        self.labels = LABELS
        self.multi_label = False
        self.activation = activation(options, self.labels, self.multi_label)
        self.rerank_score = ranking_score(options, self.labels)
        self.settings = {"activation": self.activation, "yes": tokens[1], "no": tokens[0]}
        self.trained = self._model.trained
        if not self.trained:
            self.detail = self._model.untrained("LM head")

    def prompt(self, item: TextItem) -> tuple[str, dict[str, tuple[int, int]]]:
        """The template filled in, and where the document and the query lie in it (their
        first place, in characters): what a cut may shorten."""
        if item.text_pair is None:
            raise InvalidInput("text_pair", "a yes/no reranker reads a (query, document) pair")
        check_text("text", item.text)
        check_text("text_pair", item.text_pair)
        values = {"instruction": self.instruction, "query": item.text, "document": item.text_pair}
        text, spans = "", dict[str, tuple[int, int]]()
        for i, piece in enumerate(_FIELD.split(self.template)):  # literal, field, literal...
            if i % 2:
                spans.setdefault(piece, (len(text), len(text) + len(values[piece])))
                piece = values[piece]
            text += piece
        return text, spans

    def prepare(self, item: TextItem, options: ClassifyOptions) -> Prepared:
        """The prompt as one row. A prompt longer than the model's window is refused, or, with
        `truncate`, cut at the document's end (then the query's), never at the template's:
        the judgement is read after the template's last words, so they must stay."""
        if options.long_text != "none":
            raise InvalidInput("options.long_text", f"not for a yes/no head ({self.name!r})")
        prompt, spans = self.prompt(item)
        row, encoding = encode_text(self._backbone, TextItem(prompt), truncate=False, limit=False)
        over = len(row.input_ids) - self._backbone.max_length
        if over <= 0:
            return Prepared((row,))
        if not options.truncate:
            raise InvalidInput(
                "text_pair",
                f"the prompt with this document is {len(row.input_ids)} tokens, longer than "
                f"the model's {self._backbone.max_length}; shorten it or set options.truncate",
            )
        offsets = encoding["offset_mapping"]
        cut: set[int] = set()
        for field in ("document", "query"):
            start, end = spans[field]
            inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
            cut.update(inside[len(inside) - min(over - len(cut), len(inside)) :])
        if len(cut) < over:
            raise InvalidInput(
                "text",
                f"the template and instruction alone are {len(row.input_ids) - len(cut)} tokens, "
                f"longer than the model's {self._backbone.max_length}",
            )
        keep = [i for i in range(len(row.input_ids)) if i not in cut]
        types = row.token_type_ids
        return Prepared(
            (
                Row(
                    tuple(row.input_ids[i] for i in keep),
                    None if types is None else tuple(types[i] for i in keep),
                ),
            )
        )

    def forward(self, features: Features, rows: Sequence[Row]) -> Sequence[torch.Tensor]:
        last = features.attention_mask.cumsum(1).argmax(1)  # each row's last real token
        hidden = features.hidden[torch.arange(len(rows)), last].float()
        logits = hidden @ self._weight.T
        if self._bias is not None:
            logits = logits + self._bias
        return list(logits.cpu())

    def finish(
        self, prepared: Prepared, outputs: Sequence[torch.Tensor], options: ClassifyOptions
    ) -> Classification:
        (logits,) = outputs
        return classified(self.name, False, self.labels, logits, self.activation, options.top_k)

    def relevance(self, classification: Classification) -> float:
        """A pair's score: its "yes" probability (or as `rerank_score` says)."""
        assert self.rerank_score is not None
        return relevance(self.rerank_score, classification)


class YesNoPlugin:
    task = "classify"
    contract_version = CONTRACT_VERSION
    options = {
        **CLASSIFY_OPTIONS,
        "template": "the prompt, with {query}, {document} and {instruction} (default: "
        "Qwen3-Reranker's)",
        "instruction": "what the template's {instruction} says (default: Qwen3-Reranker's)",
        "yes": "the token whose probability is the relevance (default: yes)",
        "no": "the token it is weighed against (default: no)",
    }

    def load(self, context: LoadContext) -> YesNoHead:
        if context.backbone.modality == "image":
            raise ValueError("a yes/no reranker reads text: the backbone reads images")
        return YesNoHead(context)
