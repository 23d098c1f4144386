"""The model path alone, no gRPC: padded rows, packed rows in fixed-length sequences, and
packed rows in balanced sequences, on shuffled real sentences.

    .venv/bin/python bench/packing.py [--sentences 480] [--rounds 6]

Runs headserve's Runner (backbone + encode head, the traced pass, one torch thread) on
batches of VADER sentences in random order, as a server sees them: batches of 16, 32 and 64
rows, and batches of 8-24 rows drawn at random (the sizes the server forms at 32-64
callers). Each round draws fresh sentences and sizes and runs the three layouts on the same
batches, in an order that rotates between rounds. Sentences per CPU second (this process's
CPU time, so another process on the machine does not count against a layout); the median
over the rounds, and the median of the rounds' paired ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from data import sentences
from report import markdown_head

from headserve.plugins.contract import HeadSpec, Row
from headserve.plugins.tasks import EncodeOptions, TextItem
from headserve.server.backbones.backbone import TextBackbone
from headserve.server.backbones.packing import Computed
from headserve.server.core.runner import Work
from headserve.server.loading import Settings, build_core

LAYOUTS: dict[str, Callable[[TextBackbone], None]] = {
    "padded": lambda b: _use(b, b.run_padded),
    "packed, fixed": lambda b: _use(
        b, lambda rows: b.run_packed(rows, b.pack_tokens, balance=False)
    ),
    "packed, balanced": lambda b: _use(b, lambda rows: b.run_packed(rows, b.pack_tokens)),
}


def _use(backbone: TextBackbone, run: Callable[[Sequence[Row]], Computed]) -> None:
    """The layout the runner's passes take: this benchmark's switch, kept out of the server."""
    backbone.run = run  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=480, help="per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    core = build_core(Settings(heads=(HeadSpec("encode", "encode"),), device="cpu"))
    torch.set_num_threads(1)
    backbone = core.backbone
    head = core.registry.heads["encode"].head
    every = [Work(head, head.prepare(TextItem(t), EncodeOptions()).rows[0]) for t in sentences()]
    rng = random.Random(0)
    names = list(LAYOUTS)
    columns = (
        "batches | padded sent/CPU-s | packed, fixed | packed, balanced "
        "| balanced / fixed (paired) | fixed / padded (paired)"
    )
    print(*markdown_head(columns), sep="\n")
    for label in ("16", "32", "64", "8-24 at random"):
        rates: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            work = rng.sample(every, args.sentences)
            batches = _batches(work, label, rng)
            for name in names[r % 3 :] + names[: r % 3]:  # rotate the order
                LAYOUTS[name](backbone)
                started = time.process_time()
                for batch in batches:
                    core.runner.run_batch(batch)
                rates[name].append(len(work) / (time.process_time() - started))
        med = {name: statistics.median(v) for name, v in rates.items()}
        print(
            f"| {label} | {med['padded']:.1f} | {med['packed, fixed']:.1f} "
            f"| {med['packed, balanced']:.1f} "
            f"| {_paired(rates['packed, balanced'], rates['packed, fixed']):.2f} "
            f"| {_paired(rates['packed, fixed'], rates['padded']):.2f} |",
            flush=True,
        )
    LAYOUTS["packed, balanced"](backbone)


def _paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def _batches(work: list[Work], label: str, rng: random.Random) -> list[list[Work]]:
    out, k = [], 0
    while k < len(work):
        size = rng.randint(8, 24) if label.startswith("8-24") else int(label)
        out.append(work[k : k + size])
        k += size
    return out


if __name__ == "__main__":
    main()
