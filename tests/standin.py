"""Helpers to run the worker against the stand-in sampler, and to find what it left behind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from fixtures.resources import make_resource_dir
from tests.worker_clients import REPO_ROOT

STANDIN_SAMPLER = REPO_ROOT / "fixtures" / "stable_diffusion_sample.py"


class StandIn:
    """The environment of a worker whose sampler is the stand-in, with its own temp dir."""

    def __init__(self, root: Path) -> None:
        self.resources = make_resource_dir(root / "resources")
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.marker = uuid.uuid4().hex
        self.env: dict[str, str] = {
            "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(STANDIN_SAMPLER),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(self.resources),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "4",
            "SYSTEMSCULPT_LOCAL_DIFFUSION_KILL_GRACE_MS": "300",
            "STANDIN_SD_SECONDS_PER_STEP": "0.005",
            "STANDIN_SD_MARKER": self.marker,
            "TMPDIR": str(self.tmp),
        }

    def leftover_temp_entries(self) -> list[str]:
        return sorted(entry.name for entry in self.tmp.iterdir())

    def live_processes(self, exclude: set[int] | None = None) -> list[int]:
        """Processes (samplers, their children) whose environment carries this marker."""
        exclude = (exclude or set()) | {os.getpid()}
        needle = f"STANDIN_SD_MARKER={self.marker}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in exclude:
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if needle in environ.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found


def proc_status_kib(pid: int, key: str) -> int:
    """A memory figure of a process from /proc (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")
