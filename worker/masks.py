"""Masked editing, the part every backend shares: the mask a request gives (inpaint) or
the canvas and mask an `outpaint` makes, prepared at the job's size before it is queued,
and the source laid back over each result outside the mask, so that what the mask keeps
is the source's pixels exactly, whatever the backend did to them. Previews get the same
overlay at their size: what a preview shows outside the mask is what the result will.

White repaints, black keeps, grey repaints partly; a transparent pixel of a mask
repaints (as in ComfyUI, and as Core ML's ControlNet inpaint model reads alpha 0). A mask
of another size than the reference is scaled to it, then framed as the reference is.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFilter, ImageOps

from protocol.errors import FieldError, InvalidParamsData
from protocol.models import IMAGE_SIDE_MAX, SIZE_MULTIPLE, GenerateParams, Outpaint
from worker.errors import InvalidParams
from worker.reference import Reference, png_bytes, read_upright
from worker.sizes import SizeOption, SizeTable, choose_size

OUTPAINT_FILL = (127, 127, 127)
"""What the new area of an outpaint canvas holds before it is generated: neutral grey,
which a strength of 1 replaces entirely."""


@dataclass(frozen=True)
class Edit:
    """A masked edit, prepared: what the backend is given and what is recorded."""

    mask_png: bytes
    """Greyscale (L), exactly the job's size, feathered: 255 repaints, 0 keeps."""
    mask_sha256: str | None
    """Of the mask's bytes as sent; None for an outpaint's own mask."""
    blur: int
    outpaint: dict[str, int] | None
    """The pixels added on each side, for an outpaint."""
    crop: tuple[int, int]
    """The result's size: the job's, or an outpaint canvas's (the job rounds it up to a
    multiple of 8; the extra is generated and cut off)."""

    def to_record(self) -> dict[str, object]:
        """As the PNG's `studio-imagegen` chunk records it (wire names)."""
        return {"maskSha256": self.mask_sha256, "maskBlur": self.blur, "outpaint": self.outpaint}

    def to_record_fields(self) -> dict[str, Any]:
        """As the result's metadata takes it (field names)."""
        return {"mask_sha256": self.mask_sha256, "mask_blur": self.blur, "outpaint": self.outpaint}

    def overlay(self, source: bytes) -> SourceOverlay:
        """What lays `source` (the reference, as the backend was given it) over this
        edit's result and its previews."""
        return SourceOverlay(source, self.mask_png, self.crop)


@dataclass
class SourceOverlay:
    """A masked edit's source laid back over what the backend made, outside the mask:
    over the result at its size, byte for byte where the mask is black, and over each
    preview at the preview's size. The source and mask are read once (on first use, in
    a worker thread) and shrunk once per preview size: a preview then costs one
    composite of a thumbnail, well under a millisecond."""

    source_png: bytes
    """The job's size."""
    mask_png: bytes
    """L, the job's size: 255 repaints, 0 keeps."""
    crop: tuple[int, int]
    """The result's size, within the job's (an outpaint canvas's rounding is cut off)."""
    _full_size: tuple[int, int] = (0, 0)
    """The job's size, once the source is read."""
    _sized: dict[tuple[int, int], tuple[Image.Image, Image.Image]] = field(default_factory=dict)
    """The source and mask by size, the job's own first."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    """Previews are made in worker threads."""

    def apply(self, made: Image.Image) -> Image.Image:
        """`made` (the whole job's image, at its size or shrunk) where the mask repaints,
        the source where it keeps, cut as the result is."""
        source, mask = self._at(made.size)
        result = Image.composite(made.convert("RGB"), source, mask)
        (width, height), (full_width, full_height) = made.size, self._full_size
        cut = (round(self.crop[0] * width / full_width), round(self.crop[1] * height / full_height))
        return result.crop((0, 0, *cut)) if cut != made.size else result

    def composite_png(self, generated: bytes) -> bytes:
        """`apply` to a result PNG, as a PNG."""
        with Image.open(io.BytesIO(generated)) as made:
            return png_bytes(self.apply(made))

    def _at(self, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
        """The source and mask at `size`."""
        with self._lock:
            if not self._sized:
                with Image.open(io.BytesIO(self.source_png)) as kept:
                    source = kept.convert("RGB")
                with Image.open(io.BytesIO(self.mask_png)) as opened:
                    self._sized[source.size] = (source, opened.convert("L"))
                self._full_size = source.size
            sized = self._sized.get(size)
            if sized is None:
                source, mask = self._sized[self._full_size]
                sized = self._sized[size] = (
                    source.resize(size, Image.Resampling.BILINEAR),
                    mask.resize(size, Image.Resampling.BILINEAR),
                )
        return sized


def edits_asked(params: GenerateParams) -> list[str]:
    """The masked edits a request asks for, by wire name (the protocol allows one)."""
    return [name for name, asked in (("mask", params.mask), ("outpaint", params.outpaint)) if asked]


def _refuse(field: str, reason: str) -> InvalidParams:
    return InvalidParams(
        f"Invalid params: {field}: {reason}.",
        InvalidParamsData(errors=[FieldError(field=field, message=reason)]),
    )


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Framed as `worker.reference` frames a reference: cover, then center-crop; a mask
    by `_mask_resampling`."""
    method = _mask_resampling(image, size) if image.mode == "L" else Image.Resampling.LANCZOS
    return ImageOps.fit(image, size, method=method, centering=(0.5, 0.5))


def _mask_resampling(mask: Image.Image, size: tuple[int, int]) -> Image.Resampling:
    """Enlarged, a mask's pixels become blocks, exactly as painted (a smooth filter
    would leak grey past its edge into what it keeps); reduced, they are averaged."""
    enlarging = size[0] * size[1] >= mask.width * mask.height
    return Image.Resampling.NEAREST if enlarging else Image.Resampling.BOX


def _edit_size(
    params: GenerateParams, source: Image.Image, sizes: SizeTable, chosen: SizeOption
) -> SizeOption:
    """The size a masked edit makes: an outpaint's canvas (its sides added to the
    reference, rounded up to a multiple of 8), or for a mask without a size asked the
    reference's own where the model can make it; otherwise `chosen`, as for
    image-to-image."""
    if params.outpaint is not None:
        width, height = _canvas(source.size, params.outpaint)
        return _checked(sizes, (_round_up(width), _round_up(height)), "outpaint", "the canvas")
    asked = params.width is not None or "aspect_ratio" in params.model_fields_set
    width, height = source.size
    fits = not (width % SIZE_MULTIPLE or height % SIZE_MULTIPLE) and max(width, height) <= (
        IMAGE_SIDE_MAX
    )
    return (
        choose_size(sizes, width, height) if fits and sizes.custom_sizes and not asked else chosen
    )


def _checked(sizes: SizeTable, size: tuple[int, int], field: str, what: str) -> SizeOption:
    if max(size) > IMAGE_SIDE_MAX:
        raise _refuse(
            field,
            f"{what} would be {size[0]}x{size[1]}, over the largest side of {IMAGE_SIDE_MAX}; "
            "extend less, or send a smaller reference",
        )
    return choose_size(sizes, *size)


def _round_up(side: int) -> int:
    return -(-side // SIZE_MULTIPLE) * SIZE_MULTIPLE


def _canvas(size: tuple[int, int], outpaint: Outpaint) -> tuple[int, int]:
    left, right, top, bottom = _sides(size, outpaint)
    return size[0] + left + right, size[1] + top + bottom


def _sides(size: tuple[int, int], outpaint: Outpaint) -> tuple[int, int, int, int]:
    """left, right, top, bottom: as given, or what reaches `aspectRatio` the shorter way,
    split evenly (the odd pixel right or below)."""
    if outpaint.aspect_ratio is None:
        return outpaint.left, outpaint.right, outpaint.top, outpaint.bottom
    ratio_w, ratio_h = (int(part) for part in outpaint.aspect_ratio.split(":"))
    width, height = size
    if width * ratio_h < height * ratio_w:  # too narrow: widen
        extra = round(height * ratio_w / ratio_h) - width
        return extra // 2, extra - extra // 2, 0, 0
    extra = round(width * ratio_h / ratio_w) - height
    return 0, 0, extra // 2, extra - extra // 2


def prepare_edit(
    params: GenerateParams, sizes: SizeTable, chosen: SizeOption
) -> tuple[SizeOption, Reference, Edit]:
    """The size a masked edit makes, the reference as the job is given it and the edit's
    mask at that size; -32602 naming `mask`, `outpaint` or `inputImages.0` for what is
    wrong with them."""
    source, data = read_upright(params.input_images[0], "inputImages.0")
    size = _edit_size(params, source, sizes, chosen)
    job_size = (size.width, size.height)
    sha = hashlib.sha256(data).hexdigest()
    if params.outpaint is not None:
        canvas, mask, sides = _outpaint_canvas(source, params.outpaint, job_size)
        keep = sides_box(sides, source)
        edit = Edit(
            mask_png=png_bytes(_feathered(mask, params.mask_blur, keep)),
            mask_sha256=None,
            blur=params.mask_blur,
            outpaint=dict(zip(("left", "right", "top", "bottom"), sides, strict=True)),
            crop=_canvas(source.size, params.outpaint),
        )
        return size, Reference(png_bytes(canvas), sha, *source.size, index=0), edit
    assert params.mask is not None
    mask_image, mask_data = read_upright(params.mask, "mask")
    grey = mask_image.convert("L")
    grey = grey.resize(source.size, _mask_resampling(grey, source.size))
    if not grey.getbbox():
        raise _refuse(
            "mask",
            "is black all over, so it repaints nothing; paint white where the image should "
            "change (black keeps)",
        )
    edit = Edit(
        mask_png=png_bytes(_feathered(_fit(grey, job_size), params.mask_blur)),
        mask_sha256=hashlib.sha256(mask_data).hexdigest(),
        blur=params.mask_blur,
        outpaint=None,
        crop=job_size,
    )
    return size, Reference(png_bytes(_fit(source, job_size)), sha, *source.size, index=0), edit


def sides_box(sides: tuple[int, int, int, int], source: Image.Image) -> tuple[int, int, int, int]:
    """Where the source lies on an outpaint canvas: left, top, right, bottom."""
    left, _, top, _ = sides
    return left, top, left + source.size[0], top + source.size[1]


def _outpaint_canvas(
    source: Image.Image, outpaint: Outpaint, job_size: tuple[int, int]
) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """The canvas the job is given (the source on grey, at the job's size) and its mask
    (white but where the source is)."""
    sides = _sides(source.size, outpaint)
    canvas = Image.new("RGB", job_size, OUTPAINT_FILL)
    canvas.paste(source, (sides[0], sides[2]))
    mask = Image.new("L", job_size, 255)
    mask.paste(0, sides_box(sides, source))
    return canvas, mask, sides


def _feathered(
    mask: Image.Image, radius: int, keep: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """`mask` with its edge softened by `radius`; for an outpaint, the feather reaches
    into the source (`keep`) rather than leaving a seam at its edge: the blurred mask is
    taken inside `keep` only, and white outside it."""
    if not radius:
        return mask
    blurred = mask.filter(ImageFilter.GaussianBlur(radius))
    if keep is None:
        return blurred
    whole = Image.new("L", mask.size, 255)
    whole.paste(blurred.crop(keep), keep[:2])
    return whole
