"""The protocol's method table: which handler serves which method, with which params."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.models import (
    CancelParams,
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
from worker.generation import check_request, generate, plan_job
from worker.host import HostPlatform
from worker.progress import ProgressReporter
from worker.settings import Settings


@dataclass
class WorkerMethods:
    settings: Settings
    host: HostPlatform

    async def capabilities(
        self, context: RequestContext, params: CapabilitiesParams
    ) -> CapabilitiesResult:
        return describe_capabilities(self.settings, self.host)

    async def generate(self, context: RequestContext, params: GenerateParams) -> GenerateResult:
        check_request(params, self.settings)
        job = plan_job(params, self.settings)
        progress = ProgressReporter(context, job.run_id, job.expected_total_steps)
        return await generate(params, job, self._backend(), progress)

    async def cancel(self, context: RequestContext, params: CancelParams) -> CancelResult:
        return CancelResult(cancelled=[])

    def _backend(self) -> Backend:
        if self.settings.backend == "mock":
            return MockBackend()
        return CoreMLBackend(self.settings, self.host)

    def table(self) -> dict[str, Method]:
        return {
            "capabilities": Method(CapabilitiesParams, self.capabilities),
            "generate": Method(GenerateParams, self.generate),
            "cancel": Method(CancelParams, self.cancel),
        }
