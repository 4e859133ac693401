"""The protocol's method table: which handler serves which method, with which params."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.models import CancelParams, CancelResult, CapabilitiesParams, CapabilitiesResult
from worker.capabilities import describe_capabilities
from worker.context import RequestContext
from worker.dispatch import Method
from worker.host import HostPlatform
from worker.settings import Settings


@dataclass
class WorkerMethods:
    settings: Settings
    host: HostPlatform

    async def capabilities(
        self, context: RequestContext, params: CapabilitiesParams
    ) -> CapabilitiesResult:
        return describe_capabilities(self.settings, self.host)

    async def cancel(self, context: RequestContext, params: CancelParams) -> CancelResult:
        return CancelResult(cancelled=[])

    def table(self) -> dict[str, Method]:
        return {
            "capabilities": Method(CapabilitiesParams, self.capabilities),
            "cancel": Method(CancelParams, self.cancel),
        }
