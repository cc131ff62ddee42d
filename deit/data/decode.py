"""Decoding an image file to 8-bit RGB, high bit depths included.

Pillow's convert("RGB") clips 16-bit grayscale (mode I;16, or I for a 16-bit PNG in some
versions) instead of scaling it, so such an image trained as solid white with no word. Those
are scaled to 8 bits here; modes that hold no image in a known range (float, or 32-bit
integers beyond 16 bits) are refused by name.
"""
import numpy as np
from PIL import Image

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class UnsupportedImage(ValueError):
    """An image whose pixel values have no known range (a ValueError: unreadable, by name)."""


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in SIXTEEN_BIT or im.mode == "I":
        values = np.asarray(im)
        if im.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImage(f"mode I image with values {values.min()}..{values.max()}, beyond "
                                   f"16 bits: convert it to 8-bit RGB")
        eight = np.round(values.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 -> 255
        return Image.fromarray(eight, "L").convert("RGB")
    if im.mode == "F":
        raise UnsupportedImage("mode F image (32-bit float pixels, no known range): convert it to 8-bit RGB")
    return im.convert("RGB")
