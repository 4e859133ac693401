"""Images of every mode a PNG, JPEG or WebP opens in, made RGB without losing what they
show: 16-bit grey scaled (Pillow's own conversion clips it to white), transparency
(alpha or a palette's) laid over a background, palettes and bilevel images expanded.

For references now, and for the masks and control images that come next.
"""

from __future__ import annotations

from PIL import Image

SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
WITH_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class UnsupportedMode(ValueError):
    """An image mode with no faithful RGB form here; the message says which and why."""


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """`image` as RGB: what a person sees of it, transparency over `background`."""
    mode = image.mode
    if mode in SIXTEEN_BIT_GREY or mode == "I":
        return _grey_to_eight_bits(image).convert("RGB")
    if mode == "F":
        raise UnsupportedMode(
            "is a 32-bit floating-point image, whose brightness has no fixed range; send it "
            "as an 8- or 16-bit PNG"
        )
    if mode in WITH_ALPHA or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _grey_to_eight_bits(image: Image.Image) -> Image.Image:
    """16-bit grey (a PNG's 0..65535, which Pillow opens as I;16, or I in older versions)
    as 8-bit L: scaled, not clipped."""
    wide = image.convert("I") if image.mode != "I" else image
    return wide.point(lambda value: value / 257).convert("L")
