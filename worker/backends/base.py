"""The two faces every backend shows the core.

`BackendPlugin` is what the core asks before any job: the backend's schedulers and
controls, its settings section, how `capabilities` describes it, its sizes, whether it
does image-to-image, its `doctor` checks and `install`, and how to make a `Backend`. A
plug-in answers from the disk and its settings; it imports nothing heavy until `load`.

`Backend` renders jobs: everything it is told comes in the one `JobParameters` record,
and it gives checked images back.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from protocol.models import BackendStatus, ComputeUnits, Scheduler
    from worker.checks import Check
    from worker.host import HostPlatform
    from worker.images import RenderedImage
    from worker.live import LiveSamplers
    from worker.models import Model
    from worker.parameters import JobParameters
    from worker.progress import ProgressReporter
    from worker.settings import EnvironmentReader, Settings
    from worker.sizes import SizeTable


@dataclass(frozen=True)
class JobPlan:
    """What a backend will do for a job it has checked: for its progress to report."""

    total_steps: int
    """The step total its progress ends at, known before it starts."""
    file_names: tuple[str, ...]
    """The names its images will be delivered under, by index."""


@dataclass(frozen=True)
class Rendered:
    """What a backend returns: the checked images and how it made them."""

    images: list[RenderedImage]
    warnings: list[str]
    model_id: str
    backend: str
    sample_binary: str | None
    resource_path: str | None
    duration_ms: int
    width: int
    height: int
    compute_units: ComputeUnits | None = None
    """The Core ML compute units it ran on; None for a backend that has none."""
    device: str | None = None
    """Where it ran (diffusers: cpu, cuda, mps), for a backend that says."""
    dtype: str | None = None
    dtype_reason: str | None = None


class Backend(Protocol):
    """Renders jobs. Everything it is told comes in the one `JobParameters` record."""

    def check(self, parameters: JobParameters) -> JobPlan:
        """Raise the WorkerError this job would fail with, before it is queued; else say
        how it will run."""

    async def render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered: ...

    async def aclose(self) -> None:
        """End what the backend keeps between jobs (at the worker's shutdown)."""


class Installer(Protocol):
    """`studio-imagegen-worker install --backend NAME`: the options it takes, and the run."""

    @property
    def name(self) -> str:
        """What `--backend` says for it."""

    @property
    def description(self) -> str:
        """One sentence for `install --help`."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> list[str]:
        """Add this installer's own options; their `dest` names."""

    def run(self, args: argparse.Namespace, settings: Settings, host: HostPlatform) -> int:
        """Install (or with `--verify` only check); the exit code."""


class BackendPlugin(Protocol):
    """Everything backend-specific the core asks, without importing what rendering needs."""

    @property
    def id(self) -> str:
        """As `capabilities.backend.id` and the metadata say it."""

    @property
    def names(self) -> tuple[str, ...]:
        """What SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND may say for it (lower case)."""

    @property
    def schedulers(self) -> tuple[Scheduler, ...]:
        """The schedulers it serves; the environment may pin only one of these."""

    @property
    def compute_units(self) -> tuple[ComputeUnits, ...]:
        """The `computeUnits` it takes (Core ML's); empty where it runs elsewhere."""

    @property
    def test_only(self) -> bool: ...

    @property
    def installer(self) -> Installer | None:
        """What `install --backend` runs for it; None: nothing to install."""

    def read_settings(self, reader: EnvironmentReader, home: Path) -> object:
        """Its own section of the settings, from its own variables."""

    def describe(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> BackendStatus:
        """From the settings and the disk, and the running backend once a job loaded it."""

    def sizes(self, settings: Settings) -> SizeTable:
        """The sizes its configured model can make now, by ratio."""

    def models(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> list[Model]:
        """Every model it finds, the configured one first (usable or not, and why), from
        the disk; `running`: its backend once a job loaded it (what it holds now)."""

    def image_to_image_problem(self, settings: Settings) -> str:
        """Why image-to-image cannot run; empty when it can."""

    def doctor_checks(self, settings: Settings, host: HostPlatform, load: bool) -> list[Check]:
        """`doctor`'s checks, in the order they are printed; `load`: also load the model."""

    def settings_summary(self, settings: Settings) -> str:
        """What of its settings `doctor` shows in the settings line."""

    def load(self, settings: Settings, host: HostPlatform, live: LiveSamplers) -> Backend:
        """The backend that serves `generate` (this may import what rendering needs)."""
