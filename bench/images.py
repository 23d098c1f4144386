"""Images per second: the EfficientNet-Lite0 backbone in-process against headserve serving it.

    .venv/bin/python bench/images.py [--seconds 15] [--callers 1,8,32]

Ceiling: the backbone alone (preprocessed 224x224 inputs already in memory, no decoding), in
this process, at batch sizes 1 to 64, in the two layouts the server can run (one worker on
every core; one single-threaded worker per core, computing batches at once), the best of all. Served: `headserve serve
efficientnet-lite0`, callers of the typed AsyncClient each sending Classify calls of one
JPEG photo (scikit-image's cat, 451x300, in 256 variants one pixel apart: the server
computes equal images once, so every call must send a different one; each is decoded and
preprocessed by the server), back to back for `--seconds`. Written to bench/results/images.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from pictures import photo  # noqa: E402
from report import RESULTS, write_json  # noqa: E402
from servers import headserve_server  # noqa: E402

from headserve.client import AsyncClient  # noqa: E402
from headserve.plugins.backbones import LoadOptions  # noqa: E402
from headserve.plugins.contract import Pixels, Row  # noqa: E402
from headserve.server.backbones.efficientnet import load  # noqa: E402
from headserve.server.core.threads import cores, set_torch_threads  # noqa: E402

ROOT = Path(__file__).resolve().parent


def jpeg(variant: int = 0) -> bytes:
    """The cat photo as a JPEG; each `variant` has one pixel changed, so that no two calls
    send the same image (the server computes equal images once per pass)."""
    image = Image.open(io.BytesIO(photo("chelsea.png"))).convert("RGB")
    image.putpixel((variant % image.width, variant // image.width), (variant % 256, 0, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _rate(backbone: Any, rows: list[Row], workers: int, seconds: float) -> float:
    """Images/s of `workers` threads each running the backbone on `rows` over and over."""
    done = [0]
    lock = threading.Lock()
    started = time.perf_counter()

    def work() -> None:
        with torch.inference_mode():
            backbone.run(rows)  # warm up (each thread's first pass)
            while time.perf_counter() - started < seconds:
                backbone.run(rows)
                with lock:
                    done[0] += len(rows)

    pool = [threading.Thread(target=work) for _ in range(workers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return done[0] / (time.perf_counter() - started)


def ceiling(seconds: float) -> dict[str, float]:
    """Images/s of the backbone's pass alone, per layout (WORKERSxTHREADS: that many threads
    computing batches at once, each on that many torch threads) and batch size."""
    backbone = load("efficientnet-lite0", LoadOptions(device="cpu"))
    pixels = backbone.read_image(jpeg(), 10**8)
    count = cores()
    rates = {}
    for workers, threads in dict.fromkeys([(1, count), (count, 1)]):
        set_torch_threads(threads)  # worker threads take it when they first compute
        for size in (1, 8, 16, 32, 64):
            rows = [Row((), pixels=Pixels(f"{i}", pixels.values)) for i in range(size)]
            rates[f"{workers}x{threads} batch {size}"] = _rate(backbone, rows, workers, seconds / 5)
    return rates


async def callers(target: str, count: int, seconds: float, images: list[bytes]) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(client: AsyncClient) -> None:
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            data = images[len(latencies) % len(images)]
            await client.classify([data], heads=["imagenet"], top_k=1)
            latencies.append(time.perf_counter() - sent)

    async with AsyncClient(target) as client:
        await client.classify([images[0]], heads=["imagenet"])  # warm up
        started = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(count)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "images_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--callers", default="1,8,32")
    parser.add_argument(
        "--serve-args", default="", help="more `headserve serve` options, e.g. --max-batch-items 4"
    )
    args = parser.parse_args()
    rates = ceiling(args.seconds)
    best = max(rates.values())
    print("in-process images/s:", {k: round(v, 1) for k, v in rates.items()})
    served = {}
    images = [jpeg(i) for i in range(256)]
    serve = ["efficientnet-lite0", *args.serve_args.split()]
    with headserve_server(serve, ROOT / ".cache" / "images-serve.log") as (
        _,
        target,
    ):
        for count in (int(c) for c in args.callers.split(",")):
            served[str(count)] = asyncio.run(callers(target, count, args.seconds, images))
            served[str(count)]["of_ceiling"] = served[str(count)]["images_per_s"] / best
            print(count, "callers:", {k: round(v, 3) for k, v in served[str(count)].items()})
    report = {
        "ceiling_images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "served": {k: {m: round(v, 3) for m, v in r.items()} for k, r in served.items()},
        "image": f"256 variants of a JPEG of {len(images[0])} bytes, 451x300",
        "command": "python bench/images.py " + " ".join(sys.argv[1:]),
    }
    write_json(RESULTS / "images.json", report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
