"""Helpers to run the worker against the stand-in sampler, and to find what it left behind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

from fixtures.standin import install_standin
from tests.worker_clients import LINUX, InProcessWorker, in_process_worker, request
from worker.backends.registry import read_settings


class StandIn:
    """The environment of a worker whose sampler is the stand-in, with its own temp dir."""

    def __init__(self, root: Path) -> None:
        install = install_standin(root / "standin")
        self.sampler = install.sampler
        self.resources = install.resources
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.models = root / "models"
        """The Core ML models folder: empty until a test puts bundles in it."""
        self.marker = uuid.uuid4().hex
        self.env: dict[str, str] = {
            **install.env(),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_MODELS_DIR": str(self.models),
            "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR": str(root / "diffusers-models"),
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


async def generate_once(
    standin: StandIn, params: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The response to one generate, and the progress notifications that came before it.

    `env` goes to the settings, and its STANDIN_SD_* steering to the sampler's environment.
    """
    env = env or {}
    settings = read_settings({**standin.env, **env})
    steering = {k: v for k, v in env.items() if k.startswith("STANDIN_SD_")}
    with mock.patch.dict(os.environ, steering):
        async with in_process_worker(settings, LINUX) as worker:
            return await call_collecting(worker, params)


async def call_collecting(
    worker: InProcessWorker, params: dict[str, Any], id_: Any = "g"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    await worker.send(request("generate", params, id_))
    notifications = []
    while True:
        message = await worker.receive(wait=30)
        if "method" in message:
            assert message["method"] == "progress"
            notifications.append(message["params"])
        else:
            return message, notifications
