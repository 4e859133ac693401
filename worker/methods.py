"""The protocol's method table: which handler serves which method, with which params."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.models import (
    CancelParams,
    CancelRequestParams,
    CancelResult,
    CapabilitiesParams,
    CapabilitiesResult,
    GenerateParams,
    GenerateResult,
)
from worker.backends.base import Backend
from worker.backends.coreml import CoreMLBackend
from worker.backends.mock import MockBackend
from worker.capabilities import describe_capabilities
from worker.context import RequestContext
from worker.dispatch import Method
from worker.generation import check_request, deliver, plan_job, render_timed
from worker.host import HostPlatform
from worker.jobs import Job, JobQueue
from worker.progress import ProgressReporter
from worker.sampler.process import LiveSamplers
from worker.settings import Settings


@dataclass
class WorkerMethods:
    settings: Settings
    host: HostPlatform
    live: LiveSamplers = field(default_factory=LiveSamplers)
    queue: JobQueue = field(init=False)
    backend: Backend = field(init=False)

    def __post_init__(self) -> None:
        self.queue = JobQueue(self.settings.max_concurrency, self.settings.max_queue)
        self.backend = (
            MockBackend()
            if self.settings.backend == "mock"
            else CoreMLBackend(self.settings, self.host, self.live)
        )

    async def capabilities(
        self, context: RequestContext, params: CapabilitiesParams
    ) -> CapabilitiesResult:
        return describe_capabilities(self.settings, self.host)

    async def generate(self, context: RequestContext, params: GenerateParams) -> GenerateResult:
        check_request(params, self.settings)
        plan = plan_job(params, self.settings)
        progress = ProgressReporter(context, plan.run_id, plan.expected_total_steps)
        job = Job(request_id=context.request_id, run_id=plan.run_id, progress=progress)
        rendered, started = await self.queue.run(
            job, lambda: render_timed(self.backend, plan, progress)
        )
        return deliver(params, plan, rendered, started)

    async def cancel(self, context: RequestContext, params: CancelParams) -> CancelResult:
        cancelled = self.queue.cancel(request_id=params.request_id, run_id=params.run_id)
        return CancelResult(cancelled=cancelled)

    async def cancel_request(
        self, context: RequestContext, params: CancelRequestParams
    ) -> CancelResult:
        return CancelResult(cancelled=self.queue.cancel(request_id=params.id))

    def shutdown(self) -> None:
        """Refuse new jobs and cancel the rest; each is still answered (-32800)."""
        self.queue.close()

    def table(self) -> dict[str, Method]:
        return {
            "capabilities": Method(CapabilitiesParams, self.capabilities),
            "generate": Method(GenerateParams, self.generate),
            "cancel": Method(CancelParams, self.cancel),
            "$/cancelRequest": Method(CancelRequestParams, self.cancel_request),
        }
