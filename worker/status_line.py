"""One line of status for a person: redrawn in place on a terminal, a line per update in
a log. Shared by `install`'s download bar and the terminal client's progress bar."""

from __future__ import annotations

import contextlib
from typing import TextIO

ERASE_LINE = "\r\x1b[2K"


def bar(fraction: float, width: int, full: str = "█", empty: str = "░") -> str:
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return full * filled + empty * (width - filled)


class StatusLine:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.live = stream.isatty()
        self._drawn = False
        self._text = ""

    def show(self, text: str) -> None:
        """Replace the line on a terminal; append it elsewhere."""
        with contextlib.suppress(OSError):  # a closed terminal must not end the work
            self._stream.write(ERASE_LINE + text if self.live else text + "\n")
            self._stream.flush()
        self._drawn, self._text = self.live, text

    def above(self, text: str) -> None:
        """A line of its own, printed above the status line (which is drawn again)."""
        with contextlib.suppress(OSError):
            if self._drawn:
                self._stream.write(f"{ERASE_LINE}{text}\n{self._text}")
            else:
                self._stream.write(text + "\n")
            self._stream.flush()

    def finish(self) -> None:
        """End a redrawn line, so that what is printed next starts on its own line."""
        if self._drawn:
            with contextlib.suppress(OSError):
                self._stream.write("\n")
                self._stream.flush()
        self._drawn = False
