"""Decoding an image item safely: the formats taken, the pixel limit, and RGB conversion.

An item's bytes come from a caller: they may be empty, truncated, not an image at all, or a
small file that decodes to gigapixels (a decompression bomb). The header is read first and the
size checked against the server's pixel limit before a single pixel is decompressed; anything
unreadable becomes a ValueError whose text is the caller's error message. The image is then
converted to RGB as transformers' image processors do (transparency laid on white), and a GIF
gives its first frame. Callers run this off the event loop: decoding a photo takes
milliseconds. A decode's memory peaks at up to core/limits.py's DECODE_BYTES_PER_PIXEL, so
callers ask `pixels` first and hold that much of the server's decoding budget meanwhile
(core/budget.py).
"""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


def digest(data: bytes, recipe: str) -> str:
    """A key for the row an image makes under a preprocessing `recipe`."""
    return hashlib.blake2b(data + b"\0" + recipe.encode(), digest_size=16).hexdigest()


def pixels(data: bytes, max_pixels: int) -> int:
    """How many pixels the image in `data` has, read from its header alone; ValueError
    saying what is wrong with it (as `decode`)."""
    width, height = _opened(data, max_pixels).size
    return width * height


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """The image in `data` as an RGB PIL image, or ValueError saying what is wrong with it."""
    image = _opened(data, max_pixels)
    try:
        image.seek(0)  # a GIF's (or an animated WebP's) first frame
        image.load()
    except Exception as exc:  # truncated or corrupt data: whatever the decoder raises
        raise ValueError(f"cannot be decoded ({image.format}): {exc}") from exc
    return _rgb(image)


STRIP_ROWS = 128  # rows laid on white at a time (Pillow's alpha_composite holds the GIL)


def _rgb(image: Image.Image) -> Image.Image:
    """transformers' `convert_to_rgb` of a PIL image (transparency laid on white), kept in
    PIL: its numpy form would copy a large image twice more, holding the GIL (a test holds
    the two equal). Compositing runs a strip of rows at a time: done at once, it held every
    other thread for 0.3 s on a 40-megapixel image."""
    if "A" not in image.getbands() and image.info.get("transparency") is None:
        return image.convert("RGB")
    image = image.convert("RGBA")
    width, height = image.size
    rgb = Image.new("RGB", image.size)
    for top in range(0, height, STRIP_ROWS):
        box = (0, top, width, min(height, top + STRIP_ROWS))
        strip = image.crop(box)
        white = Image.new("RGBA", strip.size, (255, 255, 255, 255))
        rgb.paste(Image.alpha_composite(white, strip).convert("RGB"), box)
    return rgb


def _opened(data: bytes, max_pixels: int) -> Image.Image:
    """The image in `data`, its header read and its size checked, no pixel decoded yet."""
    if not data:
        raise ValueError("is empty: send the bytes of a PNG, JPEG, GIF, WebP or BMP file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"is too large to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ValueError(
            f"is not an image this server reads ({', '.join(FORMATS)}): {len(data)} bytes "
            "that no decoder recognises"
        ) from exc
    except Exception as exc:  # a decoder reading a caller's broken header: their error
        raise ValueError(f"cannot be decoded: {exc!r}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ValueError(
            f"is {width}x{height} = {width * height:,} pixels, more than this server decodes "
            f"({max_pixels:,}, --max-image-pixels); send a smaller image"
        )
    return image
