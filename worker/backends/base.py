"""What every backend takes and gives: a job's resolved parameters in, checked images out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from worker.images import RenderedImage
from worker.parameters import JobParameters
from worker.progress import ProgressReporter


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


class Backend(Protocol):
    """Renders jobs. Everything it is told comes in the one `JobParameters` record."""

    def check(self, parameters: JobParameters) -> None:
        """Raise the WorkerError this job would fail with, before it is queued."""

    async def render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered: ...

    async def aclose(self) -> None:
        """End what the backend keeps between jobs (at the worker's shutdown)."""
