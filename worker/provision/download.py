"""A download that resumes where it broke off and is checked before it is used."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes if known)."""


class DownloadError(Exception):
    """The file could not be fetched or did not match its pinned size and checksum."""


def download_verified(
    url: str,
    destination: Path,
    *,
    size: int,
    sha256: str,
    progress: Progress,
    attempts: int = 5,
    retry_delay: float = 2.0,
    timeout: float = 60.0,
) -> None:
    """Fetch `url` into `destination`, resuming a `.part` left by an earlier try.

    `destination` appears only once the whole file is there with the pinned size and
    SHA-256; a mismatching download is deleted.
    """
    part = destination.with_name(destination.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _fetch_rest(url, part, size, progress, timeout)
            break
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            if attempt == attempts:
                raise DownloadError(
                    f"the download of {url} kept failing ({_describe(exc)}); "
                    f"{_size(part)} are kept in {part}, run install again to resume"
                ) from exc
            logger.warning(
                "download interrupted at %s (%s); resuming, attempt %d of %d",
                _size(part),
                _describe(exc),
                attempt + 1,
                attempts,
            )
            time.sleep(retry_delay)
    _verify(part, size, sha256)
    os.replace(part, destination)


def _fetch_rest(url: str, part: Path, size: int, progress: Progress, timeout: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if offset >= size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # nothing left to send: the part is whole (or too long)
            return
        if exc.code >= 500:
            raise  # an OSError: retried
        raise DownloadError(f"the server refused {url}: HTTP {exc.code} {exc.reason}") from exc
    with response:
        if response.status == 200 and offset:
            logger.info("the server does not resume downloads; starting over")
            offset = 0
        mode = "ab" if offset else "wb"
        done = offset
        with open(part, mode) as file:
            while True:
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                file.write(chunk)
                done += len(chunk)
                progress(done, size)
    if done < size:
        raise ConnectionError(f"the connection closed after {_size(part)} of {size} bytes")


def _verify(part: Path, size: int, sha256: str) -> None:
    actual_size = part.stat().st_size
    if actual_size != size:
        part.unlink()
        raise DownloadError(
            f"the download is {actual_size} bytes, the pinned size is {size}; it was deleted, "
            "run install again"
        )
    digest = hashlib.sha256()
    with open(part, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"the download's SHA-256 is {digest.hexdigest()}, the pinned one is {sha256}; "
            "the file was deleted, run install again (if it fails again, the file on the "
            "server changed: report it)"
        )


def _size(path: Path) -> str:
    size = path.stat().st_size if path.exists() else 0
    return f"{size / (1 << 20):.1f} MiB"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
