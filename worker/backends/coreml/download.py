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


class PinMismatch(DownloadError):
    """The server's file is not the pinned one (its size, or its SHA-256, differs)."""

    def __init__(
        self,
        detail: str,
        *,
        actual_size: int,
        pinned_size: int,
        actual_sha256: str | None = None,
        pinned_sha256: str,
    ) -> None:
        super().__init__(detail)
        self.actual_size = actual_size
        self.pinned_size = pinned_size
        self.actual_sha256 = actual_sha256
        self.pinned_sha256 = pinned_sha256


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
            _fetch_rest(url, part, size, sha256, progress, timeout)
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


def _fetch_rest(
    url: str, part: Path, size: int, sha256: str, progress: Progress, timeout: float
) -> None:
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
        offered = _offered_size(response, offset)
        if offered is not None and offered != size:
            raise PinMismatch(
                f"the server offers {offered} bytes, the pinned size is {size}; nothing more "
                "was downloaded",
                actual_size=offered,
                pinned_size=size,
                pinned_sha256=sha256,
            )
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


def _offered_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The whole file's size as the server states it, if it does."""
    if response.status == 206:
        total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _verify(part: Path, size: int, sha256: str) -> None:
    """The SHA-256 decides; the size is reported beside it."""
    actual_size = part.stat().st_size
    digest = hashlib.sha256()
    with open(part, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != sha256.lower():
        part.unlink()
        raise PinMismatch(
            f"the download is {actual_size} bytes with SHA-256 {actual}; the pins are "
            f"{size} bytes and SHA-256 {sha256}. It was deleted",
            actual_size=actual_size,
            pinned_size=size,
            actual_sha256=actual,
            pinned_sha256=sha256,
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
