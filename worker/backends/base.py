"""What every backend takes and gives: a fully resolved job in, checked images out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol.models import ComputeUnits, Scheduler
from worker.images import RenderedImage
from worker.progress import ProgressReporter
from worker.sampler.schedule import timestep_count


@dataclass(frozen=True)
class GenerationJob:
    """Everything a backend needs to render one request, every default already applied."""

    prompt: str
    negative_prompt: str
    run_id: str
    count: int
    seed: int
    step_count: int
    guidance_scale: float
    scheduler: Scheduler
    compute_units: ComputeUnits
    disable_safety: bool
    reduce_memory: bool
    timeout_ms: int
    kill_grace_ms: int

    @property
    def expected_total_steps(self) -> int:
        return timestep_count(self.step_count, self.scheduler)


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
    def model_id(self, job: GenerationJob) -> str: ...

    def check(self, job: GenerationJob) -> None:
        """Raise the WorkerError this job would fail with, before it is queued."""

    async def render(self, job: GenerationJob, progress: ProgressReporter) -> Rendered: ...
