"""A worker configured for the diffusers backend with a tiny model of random weights.

The model is built once per test session, in a child process, so that this test process
never imports torch either: in-process tests can then check that the worker does not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.worker_clients import REPO_ROOT, worker_environment
from worker.backends.diffusers.checks import install_extra_hint, missing_modules

EXTRA_MISSING = missing_modules()
"""What the worker itself finds missing of the extra (it would say so in capabilities)."""


def require_extra() -> None:
    """Skip where the diffusers extra is not installed; in CI, where it must be, fail."""
    if not EXTRA_MISSING:
        return
    message = f"the diffusers extra is not installed (missing {', '.join(EXTRA_MISSING)})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; .ci/run installs it")
    pytest.skip(f"{message}; to run these tests too, {install_extra_hint()}")


def build_tiny_model(path: Path, *options: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "fixtures.tiny_diffusers", str(path), *options],
        check=True,
        cwd=REPO_ROOT,
        env=worker_environment({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}),
        capture_output=True,
        timeout=300,
    )
    return path


class DiffusersSetup:
    """The environment of a diffusers worker, with its own temp dir and a marker that
    finds its model hosts."""

    def __init__(self, root: Path, model: Path, **variables: str) -> None:
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.marker = uuid.uuid4().hex
        self.env: dict[str, str] = {
            "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
            "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(model),
            "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR": str(root / "diffusers-models"),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_MODELS_DIR": str(root / "coreml-models"),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "4",
            "SYSTEMSCULPT_LOCAL_DIFFUSION_KILL_GRACE_MS": "10000",
            # The same precision on every machine: `auto` is bfloat16 where the CPU does
            # it in hardware (tests/test_precision.py holds `auto` to that).
            "SYSTEMSCULPT_LOCAL_DIFFUSERS_DTYPE": "float32",
            "DIFFUSERS_TEST_MARKER": self.marker,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # see worker_environment
            "TMPDIR": str(self.tmp),
            **variables,
        }

    def host_processes(self) -> list[int]:
        """Model hosts (and anything else) started with this setup's environment."""
        needle = f"DIFFUSERS_TEST_MARKER={self.marker}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if needle not in environ.read().split(b"\0"):
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if b"worker.backends.diffusers.host" in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def leftover_temp_entries(self) -> list[str]:
        return sorted(entry.name for entry in self.tmp.iterdir())


def maps_of(pid: int) -> str:
    """The files a process has mapped: its loaded libraries and extension modules."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
        return maps.read()
