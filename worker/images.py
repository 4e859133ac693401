"""The PNGs a backend produced: chosen, checked, annotated, and handed to the host."""

from __future__ import annotations

import base64
import io
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import OutputInvalidData
from worker.errors import OutputInvalid, WorkerError
from worker.file_names import NO_PROMPT_PART, fit_name
from worker.text import name_safe

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class RenderedImage:
    """One image as a backend made it, checked to be a PNG of the expected size."""

    file_name: str
    index: int
    png: bytes
    width: int
    height: int
    seed: int | None = None
    """Its own seed, where each image of a batch has one; None: the job's seed."""


def account_for(
    images: list[RenderedImage], withheld: list[int], count: int, why_none: str
) -> list[str]:
    """The warnings a job's result carries for images the safety checker withheld or the
    backend did not make; -32005 when no image is left (`why_none`: why, if none was
    withheld either)."""
    if not images:
        reason = (
            f"every image was withheld by the safety checker ({len(withheld)} of {count})"
            if withheld
            else why_none
        )
        raise OutputInvalid(
            f"The sampler's output is unusable: {reason}.", OutputInvalidData(reason=reason)
        )
    warnings = [
        f"Image {index} was withheld by the safety checker and is not returned."
        for index in sorted(withheld)
    ]
    missing = count - len(images) - len(withheld)
    if missing > 0:
        warnings.append(f"{missing} of {count} requested images were not produced.")
    return warnings


def select_outputs(root: Path, count: int, seed: int) -> list[Path]:
    """The original provider's rule: PNGs sorted by name, the `.final.png` ones if any, else
    all, the first `count` of them; intermediate images (`.<seed>.<step>.png`, from
    previews) never count. Searched below `root`, since a prompt with `/` in its first 75
    characters makes the sampler write into a subdirectory."""
    intermediate = re.compile(rf"\.{seed}\.\d+\.png$")
    pngs = sorted(
        (
            path
            for path in root.rglob("*.png")
            if path.is_file() and not intermediate.search(path.name)
        ),
        key=lambda path: path.relative_to(root).as_posix(),
    )
    finals = [path for path in pngs if path.name.endswith(".final.png")]
    return (finals or pngs)[:count]


def check_png(path: Path, expected_size: tuple[int, int]) -> tuple[bytes, int, int]:
    """The file's bytes and size if it is a complete PNG of `expected_size`, else -32005."""
    from PIL import Image, UnidentifiedImageError  # only when a request needs it

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _invalid(f"{path.name} could not be read: {exc.strerror}") from exc
    if not data.startswith(PNG_SIGNATURE):
        raise _invalid(f"{path.name} is not a PNG file")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _invalid(f"{path.name} is not a readable PNG ({exc})") from exc
    if (width, height) != expected_size:
        raise _invalid(
            f"{path.name} is {width}x{height}, expected {expected_size[0]}x{expected_size[1]}; "
            "the resources may be a different model than the configured bundle"
        )
    return data, width, height


def _invalid(reason: str) -> WorkerError:
    return OutputInvalid(
        f"The sampler's output is unusable: {reason}.",
        OutputInvalidData(reason=reason),
    )


def with_text_chunks(png: bytes, entries: list[tuple[str, str]]) -> bytes:
    """The PNG with text chunks added right after IHDR; pixels are left untouched.

    Latin-1 text goes in `tEXt`, anything else in uncompressed UTF-8 `iTXt`, as Pillow and
    the AUTOMATIC1111 web UI write them.
    """
    ihdr_end = len(PNG_SIGNATURE) + 8 + struct.unpack(">I", png[8:12])[0] + 4
    chunks = []
    for keyword, text in entries:
        key = keyword.encode("latin-1")
        try:
            chunks.append(_chunk(b"tEXt", key + b"\x00" + text.encode("latin-1")))
        except UnicodeEncodeError:
            chunks.append(_chunk(b"iTXt", key + b"\x00\x00\x00\x00\x00" + text.encode("utf-8")))
    return png[:ihdr_end] + b"".join(chunks) + png[ihdr_end:]


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def to_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def safe_file_name(name: str) -> str:
    """A name that is one plain file name: no separator, no control or bidirectional
    character, no leading dot (the backends' names are already; this is the last word)."""
    plain = name_safe(name.replace("/", "_").replace("\\", "_")).lstrip(".")
    return plain or f"{NO_PROMPT_PART}.png"


def write_without_clobbering(directory: Path, name: str, data: bytes) -> Path:
    """Write `data` into `directory` under `name`, or `stem-1.png`, `stem-2.png`, ... if
    taken (the prompt part shortened where the suffix would make the name too long); the
    name is claimed atomically, so concurrent jobs never overwrite each other. An OSError
    names the file it tried."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    attempt = 0
    while True:
        candidate = name if attempt == 0 else fit_name(f"{stem}-{attempt}{dot}{suffix}")
        path = directory / candidate
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            attempt += 1
            continue
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        except OSError:
            path.unlink(missing_ok=True)  # no half-written image (a full disk)
            raise
        return path.resolve()
