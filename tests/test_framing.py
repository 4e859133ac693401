from __future__ import annotations

from collections.abc import AsyncIterator

from worker.framing import OversizedLine, read_lines


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _lines(*parts: bytes, limit: int = 100) -> list[bytes | OversizedLine]:
    return [item async for item in read_lines(_chunks(*parts), limit)]


async def test_lines_split_across_chunks_are_joined() -> None:
    assert await _lines(b'{"a"', b':1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']


async def test_crlf_and_blank_lines() -> None:
    assert await _lines(b"one\r\n\r\n   \n\ttwo\r\n") == [b"one", b"\ttwo"]


async def test_last_line_without_newline_is_kept() -> None:
    assert await _lines(b"one\ntwo") == [b"one", b"two"]


async def test_oversized_line_is_reported_with_its_size_and_reading_goes_on() -> None:
    items = await _lines(b"x" * 60, b"y" * 60, b"z" * 30 + b"\nnext\n", limit=100)
    assert items == [OversizedLine(size=150, limit=100), b"next"]


async def test_oversized_last_line_without_newline() -> None:
    assert await _lines(b"x" * 101, limit=100) == [OversizedLine(size=101, limit=100)]


async def test_line_of_exactly_the_limit_is_accepted() -> None:
    assert await _lines(b"x" * 100 + b"\n", limit=100) == [b"x" * 100]
