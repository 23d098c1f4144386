"""The model path alone, no gRPC: padded against packed rows on shuffled real sentences.

    .venv/bin/python bench/packing.py [--sentences 960]

Runs headserve's Runner (backbone + encode head) on batches of 16, 32 and 64 VADER
sentences in random order, as a server sees them, with row packing off and on.
"""

from __future__ import annotations

import argparse
import random
import time

from data import sentences

from headserve.plugins.contract import HeadSpec
from headserve.plugins.tasks import EncodeOptions, TextItem
from headserve.server.app import Settings, build_core
from headserve.server.runner import Work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=960)
    args = parser.parse_args()
    core = build_core(Settings(heads=(HeadSpec("encode", "encode"),), device="cpu"))
    head = core.registry.heads["encode"].head
    texts = sentences(2000)
    random.Random(0).shuffle(texts)
    work = [
        Work(head, head.prepare(TextItem(t), EncodeOptions()).rows[0])
        for t in texts[: args.sentences]
    ]
    print("| batch | padded sent/s | packed sent/s | packed / padded |\n|---|---|---|---|")
    for size in (16, 32, 64):
        rates = []
        for packing in (False, True):
            core.backbone.packing = packing
            started = time.perf_counter()
            for k in range(0, len(work), size):
                core.runner.run_batch(work[k : k + size])
            rates.append(len(work) / (time.perf_counter() - started))
        print(f"| {size} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[1] / rates[0]:.2f}x |")


if __name__ == "__main__":
    main()
