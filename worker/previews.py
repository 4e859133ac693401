"""Intermediate images made into `preview` notifications: a thumbnail each, inline or
written beside the host's outputs; a masked edit's with its source laid over them outside
the mask, as its result will be. A preview that cannot be made is skipped and logged: it
must never cost the job its final images."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import anyio
import anyio.to_thread
from PIL import Image

from protocol.models import PREVIEW_MAX_SIDE
from worker.images import safe_file_name, write_without_clobbering
from worker.masks import SourceOverlay
from worker.progress import ProgressReporter, Thumbnail

logger = logging.getLogger(__name__)


async def publish_preview(
    source: Path,
    name: str,
    directory: Path | None,
    progress: ProgressReporter,
    step: int,
    index: int,
    overlay: SourceOverlay | None = None,
) -> None:
    """Send the preview of the intermediate image a backend wrote at `source`, as a
    thumbnail inline (`directory` None) or written into `directory` under `name` (off the
    event loop: a PNG to read and shrink)."""
    thumbnail = await anyio.to_thread.run_sync(_thumbnail_of_file, source, directory, name, overlay)
    if thumbnail is not None:
        progress.preview(step, index, thumbnail)


async def publish_thumbnail(
    png: bytes,
    size: tuple[int, int],
    name: str,
    directory: Path | None,
    progress: ProgressReporter,
    where: tuple[int, int],
    overlay: SourceOverlay | None = None,
) -> None:
    """Send a thumbnail a backend made itself (a PNG of `size`, no larger than a preview
    may be) as it is, inline or written into `directory` under `name`; `where`: (step,
    index). With an `overlay`, it is made again with the edit's source over it."""
    step, index = where
    if overlay is not None:
        made = await anyio.to_thread.run_sync(make_thumbnail, png, directory, name, overlay)
        if made is not None:
            progress.preview(step, index, made)
        return
    width, height = size
    if directory is None:
        thumbnail = Thumbnail(width, height, base64=base64.b64encode(png).decode("ascii"))
    else:
        try:
            path = await anyio.to_thread.run_sync(
                write_without_clobbering, directory, safe_file_name(name), png
            )
        except OSError as exc:
            logger.warning("a preview was skipped: %s", exc)
            return
        thumbnail = Thumbnail(width, height, path=str(path))
    progress.preview(step, index, thumbnail)


def _thumbnail_of_file(
    source: Path, directory: Path | None, name: str, overlay: SourceOverlay | None
) -> Thumbnail | None:
    try:
        png = source.read_bytes()
    except OSError as exc:
        logger.warning("a preview was skipped: %s cannot be read (%s)", source.name, exc)
        return None
    return make_thumbnail(png, directory, name, overlay)


def make_thumbnail(
    png: bytes, directory: Path | None, name: str, overlay: SourceOverlay | None = None
) -> Thumbnail | None:
    """A thumbnail of `png` (with `overlay`'s source over it), inline (directory None) or
    written into `directory` under `name` (never over another file); None, and a log line,
    when the image cannot be read or the file not written."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            thumbnail = image.convert("RGB")
        thumbnail.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE), Image.Resampling.LANCZOS)
        if overlay is not None:
            thumbnail = overlay.apply(thumbnail)
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="PNG")
        data = buffer.getvalue()
        width, height = thumbnail.size
        if directory is None:
            return Thumbnail(width, height, base64=base64.b64encode(data).decode("ascii"))
        path = write_without_clobbering(directory, safe_file_name(name), data)
        return Thumbnail(width, height, path=str(path))
    except (OSError, ValueError, SyntaxError) as exc:
        logger.warning("a preview was skipped: %s", exc)
        return None
