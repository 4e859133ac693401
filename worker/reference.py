"""A reference image for image-to-image: read, checked, and made into what the sampler
takes (a PNG of the model's size), before the job is queued.

Nothing reaches the sampler unchecked: the file or the base64 is read with a byte limit,
the content must be the image type it declares, its pixel count is checked from the
header before anything is decoded (no decompression bomb), and decoding errors are
named. Then the EXIF orientation is applied, transparency is flattened onto white, and
the image is scaled to cover the target size and center-cropped to it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from protocol.errors import FieldError, InvalidParamsData
from protocol.models import (
    MAX_REFERENCE_BYTES,
    MAX_REFERENCE_PIXELS,
    REFERENCE_MIME_TYPES,
    InputImage,
)
from worker.errors import InvalidParams

PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
FLATTEN_ONTO = (255, 255, 255)


@dataclass(frozen=True)
class Reference:
    """A checked, prepared reference: what the sampler is given, and what is recorded."""

    png: bytes
    """The prepared image: RGB, exactly the target size."""
    sha256: str
    """Of the bytes the host sent (the file, or the decoded base64)."""
    original_width: int
    original_height: int
    index: int


def prepare_reference(item: InputImage, index: int, size: tuple[int, int]) -> Reference:
    """The reference at `index` of `inputImages`, prepared for a model of `size`, or
    -32602 naming the index and what is wrong with it."""
    data = _read(item, index)
    return _prepare(data, item.mime_type, index, size)


def _refuse(index: int, field: str, reason: str) -> InvalidParams:
    name = f"inputImages.{index}" + (f".{field}" if field else "")
    return InvalidParams(
        f"Invalid params: {name}: {reason}.",
        InvalidParamsData(errors=[FieldError(field=name, message=reason)]),
    )


def _read(item: InputImage, index: int) -> bytes:
    if item.mime_type not in REFERENCE_MIME_TYPES:
        raise _refuse(
            index,
            "mimeType",
            f"{item.mime_type!r} is not a reference type; use one of "
            + ", ".join(REFERENCE_MIME_TYPES),
        )
    if item.base64 is not None:
        if len(item.base64) > MAX_REFERENCE_BYTES * 4 // 3 + 4:
            raise _refuse(index, "base64", _too_large(len(item.base64) * 3 // 4))
        try:
            return base64.b64decode(item.base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _refuse(index, "base64", f"is not valid base64 ({exc})") from None
    path = Path(item.file_path or "")
    field = "stagedPath" if item.staged_path is not None else "path"
    if not path.is_absolute():
        raise _refuse(index, field, f"{str(path)!r} is not an absolute path")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a directory, or a pipe that would block
            raise _refuse(index, field, f"{path} is not a regular file")
        if info.st_size > MAX_REFERENCE_BYTES:
            raise _refuse(index, field, _too_large(info.st_size))
        with open(path, "rb") as file:
            return file.read(MAX_REFERENCE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _refuse(index, field, f"{path} cannot be read ({reason})") from None


def _too_large(size: int) -> str:
    return (
        f"is {size / (1 << 20):.1f} MiB, over the limit of "
        f"{MAX_REFERENCE_BYTES // (1 << 20)} MiB; send a smaller image"
    )


def _prepare(data: bytes, mime_type: str, index: int, size: tuple[int, int]) -> Reference:
    if len(data) > MAX_REFERENCE_BYTES:
        raise _refuse(index, "", _too_large(len(data)))
    try:
        with warnings.catch_warnings():
            # The pixel limit below is ours, checked from the header before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _refuse(index, "", "is not an image (PNG, JPEG or WebP)") from None
    except Image.DecompressionBombError:
        raise _refuse(index, "", _too_many_pixels()) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _refuse(index, "", f"is not a readable image ({exc})") from None
    with image:
        declared = PIL_FORMATS[mime_type]
        if image.format != declared:
            actual = next((m for m, f in PIL_FORMATS.items() if f == image.format), image.format)
            raise _refuse(
                index, "mimeType", f"says {mime_type} but the content is {actual}; fix mimeType"
            )
        width, height = image.size
        if width * height > MAX_REFERENCE_PIXELS:
            raise _refuse(index, "", f"is {width}x{height}, " + _too_many_pixels())
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _refuse(index, "", f"is corrupt or truncated ({exc})") from None
        rgb = _flatten(upright)
        fitted = ImageOps.fit(rgb, size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
        buffer = io.BytesIO()
        fitted.save(buffer, format="PNG")
    return Reference(
        png=buffer.getvalue(),
        sha256=hashlib.sha256(data).hexdigest(),
        original_width=width,
        original_height=height,
        index=index,
    )


def _too_many_pixels() -> str:
    return f"over the limit of {MAX_REFERENCE_PIXELS:,} pixels; send a smaller image"


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, FLATTEN_ONTO)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
