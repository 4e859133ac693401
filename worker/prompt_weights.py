"""Prompt weights as AUTOMATIC1111 and ComfyUI users write them: `(word)` is 1.1 times as
strong, `((word))` 1.21, `[word]` 1/1.1, `(word:1.5)` 1.5; `\\(` and `\\)` are literal
brackets. Read into fragments of text, each with its weight.

Pure Python: the worker uses it to remove the syntax for a model that cannot weigh
words (Core ML), and the diffusers model host to weigh the prompt's embeddings.
"""

from __future__ import annotations

import re

EMPHASIS = 1.1
"""What one pair of round brackets multiplies a fragment's weight by (square: divides)."""

_TOKENS = re.compile(
    r"""
    \\[()\[\]\\]                         # an escaped bracket or backslash: literal
    | \(                                 # opens an emphasis
    | \[                                 # opens a de-emphasis
    | :\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # closes with an explicit weight
    | \)
    | \]
    | [^\\()\[\]:]+                      # plain text
    | .                                  # anything else (a lone colon, a lone backslash)
    """,
    re.VERBOSE | re.DOTALL,
)

Fragment = tuple[str, float]


def parse(text: str) -> list[Fragment]:
    """The text's fragments and their weights, adjacent ones of one weight merged. A
    bracket left open weighs what follows it to the end; a closing one that opened
    nothing is text."""
    pieces: list[list[str | float]] = []
    rounds: list[int] = []
    squares: list[int] = []

    def weigh(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] = float(piece[1]) * factor

    for match in _TOKENS.finditer(text):
        token = match.group(0)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token == "(":
            rounds.append(len(pieces))
        elif token == "[":
            squares.append(len(pieces))
        elif match.group("weight") is not None and rounds:
            weigh(rounds.pop(), float(match.group("weight")))
        elif token == ")" and rounds:
            weigh(rounds.pop(), EMPHASIS)
        elif token == "]" and squares:
            weigh(squares.pop(), 1 / EMPHASIS)
        else:
            pieces.append([token, 1.0])
    for start in rounds:
        weigh(start, EMPHASIS)
    for start in squares:
        weigh(start, 1 / EMPHASIS)
    merged: list[Fragment] = []
    for piece_text, weight in ((str(p[0]), float(p[1])) for p in pieces):
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece_text, weight)
        elif piece_text:
            merged.append((piece_text, weight))
    return merged or [("", 1.0)]


def is_weighted(text: str) -> bool:
    """The text says more than its words: a weight, or an escaped bracket."""
    return parse(text) != [(text, 1.0)]


def plain(text: str) -> str:
    """The text without the syntax: its words as a model that weighs none reads them."""
    return "".join(fragment for fragment, _ in parse(text))
