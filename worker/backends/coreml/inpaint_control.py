"""Core ML's one route to inpainting: the image its ControlNet inpaint model reads.

The sampler has no mask mode. It reads a ControlNet's image through Core Graphics,
turning each pixel of alpha 0 into -1 (`planarRGBShapedArray`): the "masked" marker of
`control_v11p_sd15_inpaint`. So the reference, made transparent where the mask repaints,
is that model's image; the source is laid back outside the mask afterwards (as every
backend's result is), since the sampler does not keep it exactly.
"""

from __future__ import annotations

import io

from PIL import Image

from worker.reference import png_bytes

REPAINTS_FROM = 128
"""A mask value at which the pixel is marked for repainting (the model's marker is all or
nothing; the feathered edge blends in the composite)."""


def inpaint_control_png(reference: bytes, mask: bytes, size: tuple[int, int] | None) -> bytes:
    """The reference as RGBA, transparent where `mask` repaints, at `size` (the size
    the ControlNet takes; None: the reference's own)."""
    with Image.open(io.BytesIO(reference)) as source, Image.open(io.BytesIO(mask)) as marks:
        image = source.convert("RGB")
        hole = marks.convert("L")
    if size is not None and size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
        hole = hole.resize(size, Image.Resampling.NEAREST)
    alpha = hole.point(lambda value: 0 if value >= REPAINTS_FROM else 255)
    image.putalpha(alpha)
    return png_bytes(image)
