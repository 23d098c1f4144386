"""Transfer learning trade-off: a head trained on the frozen backbone (headserve train-head)
against fine-tuning the whole backbone plus a head, on the same data and the same split.

    .venv/bin/python bench/finetune.py [--examples 3000] [--epochs 2] [--json PATH]

Data: --examples rated VADER movie snippets sampled with seed 0 (bench/data.py), labelled
positive/negative, split 80/20 by headserve's own seeded split. The frozen side runs
`train_head` (features computed, not cached, and timed); the full side runs
AutoModelForSequenceClassification on all-MiniLM-L6-v2 with AdamW (lr 3e-5, batch 32,
max 128 tokens) for --epochs epochs and keeps its best held-out epoch. Both on the
CPU with torch's threads set to the cores; side by side in one process.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from data import CACHE, write_sentiment_csv
from report import markdown_head, write_json
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from headserve.plugins.artifact import Network
from headserve.server.backbones.backbone import default_model_dir
from headserve.server.core.threads import set_torch_threads
from headserve.server.training import data, metrics
from headserve.server.training.command import TrainOptions, split, train_head
from headserve.server.training.fit import FitSettings


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def full_finetune(
    model_dir: Path,
    examples: list[data.Labelled],
    train: list[int],
    val: list[int],
    labels: tuple[str, ...],
    epochs: int,
    out: Path,
) -> dict[str, float]:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=len(labels)
    )
    index = {label: i for i, label in enumerate(labels)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)

    def batch(ids: list[int]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            [examples[i].item.text for i in ids],
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        )
        return dict(enc)

    best: dict[str, float] = {"accuracy": -1.0}
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        for start in range(0, len(order), 32):
            ids = [train[i] for i in order[start : start + 32]]
            target = torch.tensor([index[examples[i].label] for i in ids])
            loss = torch.nn.functional.cross_entropy(model(**batch(ids)).logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        predicted: list[int] = []
        with torch.inference_mode():
            for start in range(0, len(val), 64):
                ids = val[start : start + 64]
                predicted += model(**batch(ids)).logits.argmax(-1).tolist()
        gold = [index[examples[i].label] for i in val]
        accuracy = metrics.accuracy(predicted, gold)
        print(f"  full fine-tuning, epoch {epoch}: held-out accuracy {accuracy:.3f}", flush=True)
        if accuracy > best["accuracy"]:
            best = {
                "accuracy": accuracy,
                "macro_f1": metrics.macro_f1(predicted, gold, len(labels)),
                "best_epoch": epoch,
            }
    best["seconds"] = time.perf_counter() - started
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    best["bytes"] = folder_bytes(out)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2, help="full fine-tuning epochs")
    parser.add_argument("--json", type=Path, default=Path("bench/results/finetune.json"))
    args = parser.parse_args()
    threads = set_torch_threads(None)
    model_dir = default_model_dir()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        full_csv = CACHE / "vader_movies.csv"
        write_sentiment_csv(full_csv)
        header, *rows = full_csv.read_text(encoding="utf-8").splitlines(keepends=True)
        subset = tmp / "subset.csv"  # the snippets file is grouped by source: sample it
        chosen = random.Random(0).sample(rows, min(args.examples, len(rows)))
        subset.write_text(header + "".join(chosen), encoding="utf-8")
        examples = data.read(subset, "classify").examples
        train, val = split(len(examples), 0.2, 0)
        labels = tuple(sorted({e.label for e in examples}))

        results: dict[str, dict[str, float]] = {}
        for network in ("linear", "mlp"):
            report = train_head(
                TrainOptions(
                    task="classify",
                    data=subset,
                    out=tmp / f"head-{network}",
                    model=model_dir,
                    network=Network(network),
                    fit=FitSettings(seed=0),
                    cache_dir=None,
                    progress=False,
                )
            )
            assert list(report.val) == val  # the same split as the full fine-tuning
            results[f"frozen backbone, {network} head"] = {
                "accuracy": report.meta.metrics["accuracy"],
                "macro_f1": report.meta.metrics["macro_f1"],
                "seconds": report.seconds["features"] + report.seconds["training"],
                "features_seconds": report.seconds["features"],
                "training_seconds": report.seconds["training"],
                "bytes": folder_bytes(report.out),
                "best_epoch": report.meta.training["best_epoch"],
            }
            print(f"  frozen {network}: {results[f'frozen backbone, {network} head']}", flush=True)
        results["full fine-tuning (backbone + head)"] = full_finetune(
            model_dir, examples, train, val, labels, args.epochs, tmp / "full"
        )
    print(
        f"\n{len(examples)} examples ({len(train)} train, {len(val)} held out), "
        f"{threads} torch threads\n"
    )
    columns = "method | held-out accuracy | macro-F1 | training time s | bytes to ship"
    print(*markdown_head(columns, "lrrrr"), sep="\n")
    for name, r in results.items():
        print(
            f"| {name} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['seconds']:.1f} | "
            f"{int(r['bytes']):,} |"
        )
    write_json(args.json, {"examples": len(examples), "threads": threads, "results": results})


if __name__ == "__main__":
    main()
