"""images.decode lays transparency on white and makes RGB exactly as transformers'
`convert_to_rgb` does, for every mode a caller's file may decode to (images taller than one
strip of the compositing, STRIP_ROWS)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from transformers.image_transforms import convert_to_rgb

from headserve.server.backbones.images import decode, pixels


def _file(mode: str, fmt: str = "PNG", **options: object) -> bytes:
    rng = np.random.default_rng(len(mode))
    rgba = Image.fromarray(rng.integers(0, 256, (301, 53, 4), dtype=np.uint8), "RGBA")
    image = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(16)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


CASES = {
    "RGB": _file("RGB"),
    "RGBA": _file("RGBA"),
    "LA": _file("LA"),
    "L": _file("L"),
    "palette": _file("P"),
    "palette with a transparent index": _file("P", transparency=3),
    "GIF with transparency": _file("P", "GIF", transparency=5),
    "JPEG": _file("RGB", "JPEG"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_decode_equals_transformers_convert_to_rgb(name: str) -> None:
    data = CASES[name]
    expected = convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
    got = decode(data, 100_000)
    assert got.mode == "RGB"
    assert np.array_equal(np.asarray(got), expected)
    assert pixels(data, 100_000) == 301 * 53
