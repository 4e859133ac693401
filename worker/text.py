"""Text from a request that reaches a file system or a terminal, made harmless there.

A prompt may carry control characters (an escape sequence retitles a terminal or clears
it) and bidirectional controls (U+202E makes `fox\u202egnp.exe` read as another
extension). Neither belongs in a file name or in a line a person reads.
"""

from __future__ import annotations

import re

UNSAFE_CHARACTERS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
"""C0 and C1 controls, DEL, the bidirectional marks, embeddings, overrides and isolates,
and the line and paragraph separators."""


def name_safe(text: str, replacement: str = "_") -> str:
    """`text` with every unsafe character replaced, for a file name."""
    return UNSAFE_CHARACTERS.sub(replacement, text)


def terminal_safe(text: str) -> str:
    """`text` with every unsafe character but the newline shown as its escape (`\\x1b`,
    `\\u202e`), for a terminal: what a person reads is what was sent, and inert."""
    return UNSAFE_CHARACTERS.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    character = match.group()
    if character == "\n":
        return character
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
