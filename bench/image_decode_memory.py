"""What decoding one image costs in memory, per pixel: the figure the decoding budget
(--max-image-decode-bytes) charges each image.

    .venv/bin/python bench/image_decode_memory.py [--side 6300]

For each PNG colour mode, a fresh process loads EfficientNet-Lite0 and reads one flat-colour
image of SIDE x SIDE pixels (about 40 megapixels, a file of 0.1 to 6 MB: highly
compressible) the way the server does (decode, lay transparency on white, RGB, preprocess).
It prints the process's peak resident memory above what it held before the read, per pixel.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import io, resource, sys, time
from PIL import Image
side, mode = int(sys.argv[1]), sys.argv[2]
buffer = io.BytesIO()
Image.new("RGB", (side, side), (200, 30, 40)).convert(mode).save(buffer, "PNG", optimize=True)
data = buffer.getvalue()
del buffer
from headserve.server.loading import Settings, build_core
core = build_core(Settings(model_dir="efficientnet-lite0", device="cpu", heads=()))
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
cpu = time.process_time()
core.backbone.read_image(data, side * side)
cpu = time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(len(data), cpu, (peak - before) / (side * side))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=6300)
    args = parser.parse_args()
    print(f"{args.side} x {args.side} = {args.side**2 / 1e6:.1f} MP")
    print("| PNG mode | file bytes | CPU s | peak bytes / pixel |")
    print("|---|---:|---:|---:|")
    for mode in ("RGB", "RGBA", "LA", "L", "P"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.side), mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        size, cpu, per_pixel = int(out[0]), float(out[1]), float(out[2])
        print(f"| {mode} | {size:,} | {cpu:.2f} | {per_pixel:.1f} |", flush=True)


if __name__ == "__main__":
    main()
