"""A reference image for image-to-image: read, checked, and made into what the sampler
takes (a PNG of the model's size), before the job is queued.

Nothing reaches the sampler unchecked: the file or the base64 is read with a byte limit,
the content must be the image type it declares, its pixel count is checked from the
header before anything is decoded (no decompression bomb), and decoding errors are
named. Then the EXIF orientation is applied, the image is made RGB faithfully whatever
its mode (`worker.image_modes`: 16-bit grey scaled, transparency flattened onto white),
and it is scaled to cover the target size and center-cropped to it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import stat
import string
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
from worker.image_modes import UnsupportedMode, to_rgb

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


def read_upright(item: InputImage, where: str) -> tuple[Image.Image, bytes]:
    """The image of `item` upright and RGB at its own size, and the bytes it came from,
    with every check a reference gets; -32602 naming `where` (`mask`, `inputImages.0`)
    and what is wrong with it."""
    data = _read(item, where)
    return _decoded(data, item.mime_type, where)[0], data


def _refuse(index: int | str, field: str, reason: str) -> InvalidParams:
    where = index if isinstance(index, str) else f"inputImages.{index}"
    name = where + (f".{field}" if field else "")
    return InvalidParams(
        f"Invalid params: {name}: {reason}.",
        InvalidParamsData(errors=[FieldError(field=name, message=reason)]),
    )


def _read(item: InputImage, index: int | str) -> bytes:
    if item.mime_type not in REFERENCE_MIME_TYPES:
        raise _refuse(
            index,
            "mimeType",
            f"{item.mime_type!r} is not a reference type; use one of "
            + ", ".join(REFERENCE_MIME_TYPES),
        )
    if item.base64 is not None:
        if len(item.base64) > MAX_REFERENCE_BYTES * 4 // 3 + 4 * 1024:
            raise _refuse(index, "base64", _too_large(len(item.base64) * 3 // 4))
        return decode_base64(item.base64, index)
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


_DATA_URL = re.compile(r"data:([^,;]*)(;[^,]*)?,", re.IGNORECASE)
_BASE64_CHARACTERS = frozenset(string.ascii_letters + string.digits + "+/=")


def decode_base64(text: str, index: int | str, field: str = "base64") -> bytes:
    """The bytes of base64 as browsers, Node and tools write it: a `data:` URL's prefix,
    line breaks and spaces, the URL-safe alphabet and missing padding are all taken;
    what is not base64 is named exactly (which character, where)."""
    data_url = _DATA_URL.match(text.lstrip())
    if data_url is not None:
        if ";base64" not in (data_url.group(2) or "").lower():
            raise _refuse(
                index, field, "is not valid base64: a data: URL without ;base64 (send that form)"
            )
        text = text.lstrip()[data_url.end() :]
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    for position, character in enumerate(compact):
        if character not in _BASE64_CHARACTERS:
            raise _refuse(
                index,
                field,
                f"is not valid base64: {character!r} at position {position} (spaces and line "
                "breaks not counted) is none of A-Z, a-z, 0-9, + and / (or - and _), nor = "
                "at the end",
            )
    stripped = compact.rstrip("=")
    if "=" in stripped:
        raise _refuse(index, field, "is not valid base64: '=' may only pad its end")
    if len(stripped) % 4 == 1:
        digits = len(stripped)
        raise _refuse(
            index, field, f"is not valid base64: {digits} digits make no whole bytes (cut short?)"
        )
    return base64.b64decode(stripped + "=" * (-len(stripped) % 4))


def _too_large(size: int) -> str:
    return (
        f"is {size / (1 << 20):.1f} MiB, over the limit of "
        f"{MAX_REFERENCE_BYTES // (1 << 20)} MiB; send a smaller image"
    )


def _prepare(data: bytes, mime_type: str, index: int, size: tuple[int, int]) -> Reference:
    rgb, (width, height) = _decoded(data, mime_type, index)
    fitted = ImageOps.fit(rgb, size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return Reference(
        png=png_bytes(fitted),
        sha256=hashlib.sha256(data).hexdigest(),
        original_width=width,
        original_height=height,
        index=index,
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(data: bytes, mime_type: str, index: int | str) -> tuple[Image.Image, tuple[int, int]]:
    """`data` decoded, upright and RGB, and its size as stored (before the EXIF
    orientation); or -32602 for what keeps it from being one."""
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
        try:
            return to_rgb(upright, FLATTEN_ONTO), (width, height)
        except UnsupportedMode as exc:
            raise _refuse(index, "", str(exc)) from None


def _too_many_pixels() -> str:
    return f"over the limit of {MAX_REFERENCE_PIXELS:,} pixels; send a smaller image"
