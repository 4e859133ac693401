"""Where the `studio-imagegen-worker` command starts and ends.

Before anything heavy is imported, a Ctrl-C means exit 130, quietly (no traceback from
the middle of an import). At the end the process leaves at once, once its output is
flushed: the interpreter's own shutdown would put Ctrl-C back to its default first, and
a second Ctrl-C landing then would kill the worker by the signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from types import FrameType
from typing import NoReturn


def _leave(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(130)  # what a shell reports for Ctrl-C


signal.signal(signal.SIGINT, _leave)


def main() -> NoReturn:
    from worker.cli import main as run

    code = run()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
