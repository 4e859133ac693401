"""Splits a byte stream into lines, without ever holding an oversized line whole."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class OversizedLine:
    """A line longer than the limit; its bytes were discarded as they arrived."""

    size: int
    limit: int


async def read_lines(
    chunks: AsyncIterable[bytes], max_line_bytes: int
) -> AsyncIterator[bytes | OversizedLine]:
    """Yield each non-blank line (without `\\n` or `\\r\\n`), or an OversizedLine marker.

    A last line without a newline at the end of the stream is still yielded.
    """
    buffer = bytearray()
    discarded = 0  # > 0 while skipping the rest of an oversized line
    async for chunk in chunks:
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if discarded:
                discarded += len(piece)
            elif len(buffer) + len(piece) > max_line_bytes:
                discarded = len(buffer) + len(piece)
                buffer.clear()
            else:
                buffer += piece
            if end < 0:
                break
            start = end + 1
            if discarded:
                yield OversizedLine(size=discarded, limit=max_line_bytes)
                discarded = 0
            else:
                line = _finish(buffer)
                if line is not None:
                    yield line
    if discarded:
        yield OversizedLine(size=discarded, limit=max_line_bytes)
    else:
        line = _finish(buffer)
        if line is not None:
            yield line


def _finish(buffer: bytearray) -> bytes | None:
    line = bytes(buffer)
    buffer.clear()
    if line.endswith(b"\r"):
        line = line[:-1]
    return line if line.strip() else None
