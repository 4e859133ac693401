"""Turns the sampler's stdout, as it arrives, into events the worker reports as progress."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(
    r"\x1b\[1A\x1b\[KStep (\d+) of (\d+)\s+\[mean: ([\d.]+), median: ([\d.]+), last ([\d.]+)\]"
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


class SamplerOutputParser:
    """Feed it bytes as they come; it returns the events completed by them.

    Lines end in `\\n` (a terminal may add `\\r`); the safety message has no newline of
    its own, so it is recognised wherever it completes.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def feed(self, data: bytes) -> list[SamplerEvent]:
        return self._parse(self._decoder.decode(data))

    def finish(self) -> list[SamplerEvent]:
        events = self._parse(self._decoder.decode(b"", final=True))
        if self._pending:
            events += self._line(self._pending)
            self._pending = ""
        return events

    def _parse(self, text: str) -> list[SamplerEvent]:
        events: list[SamplerEvent] = []
        self._pending += text.replace("\r", "")
        while True:
            withheld = _SAFETY.search(self._pending)
            newline = self._pending.find("\n")
            if withheld and (newline < 0 or withheld.start() < newline):
                events += self._line(self._pending[: withheld.start()])
                events.append(ImageWithheld(int(withheld.group(1))))
                self._pending = self._pending[withheld.end() :]
                continue
            if newline < 0:
                return events
            events += self._line(self._pending[:newline])
            self._pending = self._pending[newline + 1 :]

    def _line(self, raw: str) -> list[SamplerEvent]:
        step = _STEP.match(raw)
        if step:
            index, total = int(step.group(1)), int(step.group(2))
            return [StepCompleted(index + 1, total, float(step.group(4)))]
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
