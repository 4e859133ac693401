"""The protocol's method table: which handler serves which method, with which params."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol.models import (
    CancelParams,
    CancelRequestParams,
    CancelResult,
    CapabilitiesParams,
    CapabilitiesResult,
    GenerateParams,
    GenerateResult,
)
from worker.capabilities import describe_capabilities
from worker.context import RequestContext
from worker.dispatch import Method
from worker.host import HostPlatform
from worker.jobs import JobQueue
from worker.live import LiveSamplers
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.generation import Generator


@dataclass
class WorkerMethods:
    """Owns the handlers of the protocol's methods and what they share: the settings, the
    job queue, the live samplers, and the generate path (loaded on the first generate)."""

    settings: Settings
    host: HostPlatform
    live: LiveSamplers = field(default_factory=LiveSamplers)
    queue: JobQueue = field(init=False)
    _generator: Generator | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.queue = JobQueue(self.settings.max_concurrency, self.settings.max_queue)

    async def capabilities(
        self, context: RequestContext, params: CapabilitiesParams
    ) -> CapabilitiesResult:
        running = self._generator.backends if self._generator else {}
        return describe_capabilities(self.settings, self.host, running)

    async def generate(self, context: RequestContext, params: GenerateParams) -> GenerateResult:
        if self._generator is None:
            # Loaded on the first generate: start-up and `capabilities` stay light.
            from worker.generation import Generator

            self._generator = Generator(self.settings, self.host, self.live)
        return await self._generator.generate(context, params, self.queue)

    async def cancel(self, context: RequestContext, params: CancelParams) -> CancelResult:
        if params.names_request:
            return CancelResult(cancelled=self.queue.cancel_request(params.request_id))
        assert params.run_id is not None  # the model holds exactly one of the two
        return CancelResult(cancelled=self.queue.cancel_run(params.run_id))

    async def cancel_request(
        self, context: RequestContext, params: CancelRequestParams
    ) -> CancelResult:
        return CancelResult(cancelled=self.queue.cancel_request(params.id))

    def shutdown(self) -> None:
        """Refuse new jobs and cancel the rest; each is still answered (-32800)."""
        self.queue.close()

    async def aclose(self) -> None:
        """After the last answer: end what the backend keeps running (a model host)."""
        if self._generator is not None:
            await self._generator.aclose()

    def table(self) -> dict[str, Method]:
        return {
            "capabilities": Method(CapabilitiesParams, self.capabilities),
            "generate": Method(GenerateParams, self.generate, runs_as_notification=False),
            "cancel": Method(CancelParams, self.cancel),
            "$/cancelRequest": Method(CancelRequestParams, self.cancel_request),
        }
