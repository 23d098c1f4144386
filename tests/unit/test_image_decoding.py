"""Decoding a caller's image bytes: every format taken, RGB as transformers makes it, and
the refusals (a clear ValueError, never another exception)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pictures import bomb, encoded, picture
from PIL import Image

from headserve.server.backbones.images import decode, digest


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "L", {}),
        ("JPEG", "RGB", {"quality": 95}),
        ("GIF", "P", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("BMP", "RGB", {}),
    ],
)
def test_every_format_decodes_to_rgb_of_its_size(fmt: str, mode: str, options: dict) -> None:  # type: ignore[type-arg]
    data = encoded(picture(37, 23, 7, mode), fmt, **options)
    image = decode(data, 10_000)
    assert (image.mode, image.size) == ("RGB", (37, 23))


def test_transparency_is_laid_on_white_and_a_gif_gives_its_first_frame() -> None:
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(decode(encoded(clear), 100)).tolist()[0][0] == [255, 255, 255]
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((200, 0, 0), (0, 0, 200))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    red = np.asarray(decode(out.getvalue(), 100))[0, 0]
    assert red[0] > 150 and red[2] < 50


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "is empty"),
        (b"\x00" * 64, "not an image"),
        (encoded(picture(64, 64))[:120], "cannot be decoded"),
        (encoded(picture(64, 64), "JPEG")[:300], "cannot be decoded"),
        (encoded(picture(64, 64), "GIF")[:40], "cannot be decoded|not an image"),
        (bomb(), "pixels"),
        (bomb(0, 5), "no pixels|not an image|cannot be decoded"),  # a zero-size header
        (bomb(3000, 3000), "more than this server decodes"),  # under PIL's own limit, over ours
        (encoded(picture(64, 64), "TIFF"), "not an image"),  # a format the server does not take
    ],
)
def test_bad_bytes_are_a_value_error_saying_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        decode(data, 1_000_000)


def test_the_row_key_names_the_bytes_and_the_preprocessing() -> None:
    a, b = encoded(picture(8, 8, 1)), encoded(picture(8, 8, 2))
    assert digest(a, "224") == digest(a, "224") != digest(b, "224")
    assert digest(a, "224") != digest(a, "256")
