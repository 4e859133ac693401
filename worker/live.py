"""What runs right now on the worker's behalf: sampler process groups, job directories."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path


class LiveSamplers:
    """The sampler process groups and job directories that exist right now.

    Normal endings clean up after themselves; this is for an abrupt exit (a second
    Ctrl-C), which must still leave no process and no directory behind.
    """

    def __init__(self) -> None:
        self.groups: set[int] = set()
        self.directories: set[Path] = set()

    def abort_all(self) -> None:
        for pgid in list(self.groups):
            signal_group(pgid, signal.SIGKILL)
        for directory in list(self.directories):
            shutil.rmtree(directory, ignore_errors=True)
        self.groups.clear()
        self.directories.clear()


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """Signal a whole process group; one that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def signal_name(number: int) -> str:
    """`SIGKILL` for 9; `signal 77` for a number with no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
