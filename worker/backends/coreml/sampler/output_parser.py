"""Turns the sampler's stdout, as it arrives, into events the worker reports as progress."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(
    r"\x1b\[1A\x1b\[KStep (\d+) of (\d+)\s+\[mean: ([\d.]+), median: ([\d.]+), last ([\d.]+)\]"
    r"(?: step/sec saved (\d+) images?)?"
)
_SAFETY = re.compile(r"Image (\d+) failed safety check and was not saved")
_SAVED = re.compile(r"^Saved (.+)$")
_LOADING = (
    "Loading resources and creating pipeline",
    "(Note: This can take a while the first time using these resources)",
)
_SAMPLING = "Sampling ..."


@dataclass(frozen=True)
class Loading:
    message: str


@dataclass(frozen=True)
class SamplingStarted:
    pass


@dataclass(frozen=True)
class StepCompleted:
    completed: int
    """Steps done, 1-based (the sampler prints the 0-based index of the step it finished)."""
    total: int
    steps_per_second: float
    saved: int = 0
    """Intermediate images written at this step (`--save-every`), named with its index."""

    @property
    def index(self) -> int:
        """The step's 0-based index, as the sampler prints it and names its files."""
        return self.completed - 1


@dataclass(frozen=True)
class ImageSaved:
    file_name: str


@dataclass(frozen=True)
class ImageWithheld:
    index: int


@dataclass(frozen=True)
class OtherLine:
    text: str


SamplerEvent = Loading | SamplingStarted | StepCompleted | ImageSaved | ImageWithheld | OtherLine


MAX_LINE_CHARS = 16 * 1024
"""Of a longer line only the last this many characters are kept (a flood without a
newline must not grow memory or slow the parser)."""


class SamplerOutputParser:
    """Feed it bytes as they come; it returns the events completed by them.

    Lines end in `\\n` (a terminal may add `\\r`). The safety message has no newline of
    its own, so a line is split wherever one completes. Each byte is looked at a bounded
    number of times: only new text is searched for newlines, and the unfinished line is
    kept as pieces, cut to its tail when it outgrows twice the limit.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pieces: list[str] = []
        self._size = 0

    def feed(self, data: bytes) -> list[SamplerEvent]:
        return self._parse(self._decoder.decode(data))

    def finish(self) -> list[SamplerEvent]:
        events = self._parse(self._decoder.decode(b"", final=True))
        return events + self._line(self._take())

    def _parse(self, text: str) -> list[SamplerEvent]:
        events: list[SamplerEvent] = []
        text = text.replace("\r", "")
        start = 0
        while (newline := text.find("\n", start)) >= 0:
            self._append(text[start:newline])
            events += self._line(self._take())
            start = newline + 1
        self._append(text[start:])
        return events

    def _append(self, piece: str) -> None:
        if not piece:
            return
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size > 2 * MAX_LINE_CHARS:
            tail = "".join(self._pieces)[-MAX_LINE_CHARS:]
            self._pieces, self._size = [tail], len(tail)

    def _take(self) -> str:
        line = "".join(self._pieces)
        self._pieces, self._size = [], 0
        return line

    def _line(self, raw: str) -> list[SamplerEvent]:
        events: list[SamplerEvent] = []
        position = 0
        for withheld in _SAFETY.finditer(raw):
            events += self._text(raw[position : withheld.start()])
            events.append(ImageWithheld(int(withheld.group(1))))
            position = withheld.end()
        return events + self._text(raw[position:])

    def _text(self, raw: str) -> list[SamplerEvent]:
        step = _STEP.match(raw)
        if step:
            index, total = int(step.group(1)), int(step.group(2))
            written = int(step.group(6)) if step.group(6) else 0
            return [StepCompleted(index + 1, total, float(step.group(4)), written)]
        text = _ANSI.sub("", raw).strip()
        if not text:
            return []
        if text in _LOADING:
            return [Loading(text)]
        if text == _SAMPLING:
            return [SamplingStarted()]
        saved = _SAVED.match(text)
        if saved:
            return [ImageSaved(saved.group(1))]
        return [OtherLine(text)]
