"""The worker's own temporary directories: named after the process that made them, so
that a worker killed without a chance to clean up (SIGKILL, a power cut) leaves nothing
behind for good: the next worker to start removes what no live process owns."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "studio-imagegen-"
_OWNED = re.compile(rf"{re.escape(PREFIX)}(?:[a-z]+-)?(\d+)-")


def make_directory(kind: str = "") -> Path:
    """A new private directory (mode 0700) in the temp dir, named after this process:
    `studio-imagegen-<kind>-<pid>-XXXXXXXX`."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind + '-' if kind else ''}{os.getpid()}-"))


def sweep_stale(directory: Path | None = None) -> list[Path]:
    """Remove this user's worker directories in the temp dir whose process is gone; the
    ones removed."""
    root = directory if directory is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        logger.info("removed %d directory(ies) left by workers that are gone", len(removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or no pid at all: not ours to judge
    return True
