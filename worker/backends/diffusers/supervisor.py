"""The model host's supervisor: it starts the host and waits for its load, keeps it warm
between jobs, hands it a job, replaces a host that unloaded itself or died, kills one that
will not stop, and says what `capabilities` shows of it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anyio

from protocol.errors import BackendUnavailableData, SamplerFailedData, TimedOutData
from protocol.models import ModelHostStatus
from worker.backends.diffusers.checks import ModelLocation, not_loaded
from worker.backends.diffusers.host import messages
from worker.backends.diffusers.host_process import HostGone, ModelHostProcess, host_command
from worker.backends.diffusers.settings import BACKEND_ID, DiffusersSettings
from worker.backends.diffusers.variables import ENV_LOAD_TIMEOUT_MS
from worker.errors import BackendUnavailable, SamplerFailed, TimedOut
from worker.live import LiveSamplers
from worker.progress import ProgressReporter

logger = logging.getLogger(__name__)


@dataclass
class HostState:
    """What `capabilities` reports of the model host."""

    device: str = ""
    dtype: str = ""
    dtype_reason: str = ""
    last_load_ms: int | None = None
    pid: int | None = None
    safety_checker: bool = False
    loaded: bool = False
    load_error: str = ""
    """Why the last load failed; empty after a load that worked."""
    load_fix: str = ""


class ModelHostSupervisor:
    """Owns the one model host: at most one at a time, started on demand."""

    def __init__(
        self,
        settings: DiffusersSettings,
        live: LiveSamplers,
        *,
        safety: bool,
        kill_grace_ms: int,
    ) -> None:
        self._settings = settings
        self._live = live
        self._safety = safety
        self._kill_grace_seconds = kill_grace_ms / 1000
        self._host: ModelHostProcess | None = None
        self._state = HostState()
        self._model: ModelLocation | None = None
        """What the host holds (or is loading)."""
        self._load_ms: dict[Path, int] = {}
        """How long each model's last load took, for the next load's progress."""

    @property
    def loaded_model(self) -> Path | None:
        """The model the host holds now; None while none is loaded."""
        if self._host is None or self._host.exited or not self._state.loaded:
            return None
        return self._model.path if self._model is not None else None

    @property
    def device(self) -> str:
        """Where the last loaded host ran."""
        return self._state.device

    @property
    def dtype(self) -> str:
        """The precision the last loaded host ran in."""
        return self._state.dtype

    @property
    def dtype_reason(self) -> str:
        """Why it ran in that precision (`auto`'s choice, or the variable set)."""
        return self._state.dtype_reason

    @property
    def load_fix(self) -> str:
        """What fixes the last failed load (empty when it did not fail)."""
        return self._state.load_fix

    def status(self) -> ModelHostStatus:
        host, state = self._host, self._state
        if host is None or host.exited or not state.loaded:
            return not_loaded(self._settings, state.last_load_ms, state.load_error)
        return ModelHostStatus(
            loaded=True,
            device=state.device,
            dtype=state.dtype,
            dtype_reason=state.dtype_reason,
            last_load_ms=state.last_load_ms,
            idle_unload_ms=self._settings.idle_ms,
            pid=host.pid,
        )

    async def start_job(
        self, location: ModelLocation, job: messages.HostJob, progress: ProgressReporter
    ) -> tuple[ModelHostProcess, messages.Accepted]:
        """A loaded host that has accepted `job`. A host that went idle and exited just
        as the job came is replaced, and the job sent again. A load has its own limit
        (the settings' `load_timeout_ms`), not the job's."""
        for _attempt in range(2):
            host = await self._loaded_host(location, progress)
            reply: messages.Event
            try:
                await host.send(messages.Generate(job=job))
                reply = await host.receive()
            except HostGone:
                reply = messages.Unloaded(idle_ms=self._settings.idle_ms)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.stop_job(host)
                raise
            if isinstance(reply, messages.Accepted):
                return host, reply
            await self.discard()
            if isinstance(reply, messages.Failed):
                raise SamplerFailed(
                    f"The diffusers model host could not start the job: {reply.reason}",
                    SamplerFailedData(exit_code=None, signal=None, stderr=reply.reason),
                )
            if not isinstance(reply, messages.Unloaded):
                raise SamplerFailed(
                    f"The diffusers model host answered a job with {reply.type!r} "
                    "instead of accepting it.",
                    SamplerFailedData(exit_code=None, signal=None, stderr=""),
                )
        raise SamplerFailed(
            "The diffusers model host exited twice before taking the job; see the log.",
            SamplerFailedData(exit_code=None, signal=None, stderr=""),
        )

    async def _loaded_host(
        self, location: ModelLocation, progress: ProgressReporter
    ) -> ModelHostProcess:
        """A host holding `location`'s model: the one that runs, or a new one (the host
        keeps one model: another is a reload)."""
        if self._host is not None and self._host.exited:
            await self.discard()  # it unloaded itself after being idle
        switching_from = None
        if self._host is not None and self._model is not None and self._model.path != location.path:
            switching_from = self._model.label
            await self.discard()
        if self._host is not None:
            return self._host
        assert location.path is not None
        settings = self._settings
        limit_ms = settings.load_timeout_ms
        last_ms = self._load_ms.get(location.path)
        last = f" (its last load took {last_ms / 1000:.1f} s)" if last_ms is not None else ""
        starting = (
            f"Switching from {switching_from} to {location.label}: starting a model host"
            if switching_from
            else f"Starting the model host for {location.label}"
        )
        progress.loading(f"{starting}{last}; a load may take up to {_duration(limit_ms)}")
        self._model = location
        host = await ModelHostProcess.start(
            host_command(
                location.path,
                location.label,
                settings.device,
                settings.dtype,
                settings.idle_ms,
                safety=self._safety,
                family=location.family,
                refiner=location.refiner,
            ),
            self._live,
        )
        self._host = host
        try:
            with anyio.move_on_after(limit_ms / 1000) as limit:
                loaded = await self._wait_for_load(host, progress, last)
            if limit.cancelled_caught:
                await self.discard()
                raise TimedOut(
                    f"The diffusers model host did not load {location.label} within "
                    f"{_duration(limit_ms)} and was stopped (the job's own timeoutMs counts "
                    "only its sampling). Check free memory and the disk the model is on, "
                    f"or raise {ENV_LOAD_TIMEOUT_MS}; the next job starts a new host.",
                    TimedOutData(timeout_ms=limit_ms),
                )
        except HostGone as exc:
            await self.discard()
            raise host_failed(exc, f" while loading {location.label}") from exc
        except BaseException:  # a failed load, or cancelled while loading: no half host
            with anyio.CancelScope(shield=True):
                await self.discard()
            raise
        self._load_ms[location.path] = loaded.load_ms
        self._state = HostState(
            device=loaded.device,
            dtype=loaded.dtype,
            dtype_reason=loaded.dtype_reason,
            last_load_ms=loaded.load_ms,
            pid=host.pid,
            safety_checker=loaded.safety_checker,
            loaded=True,
        )
        logger.info(
            "model host %d loaded %s on %s (%s) in %d ms",
            host.pid,
            location.label,
            loaded.device,
            loaded.dtype,
            loaded.load_ms,
        )
        progress.loading(
            f"Loaded {location.label} on {loaded.device} in {loaded.load_ms / 1000:.1f} s"
        )
        return host

    async def _wait_for_load(
        self, host: ModelHostProcess, progress: ProgressReporter, last: str
    ) -> messages.Loaded:
        while True:
            event = await host.receive()
            if isinstance(event, messages.Loading):
                progress.loading(f"{event.message}{last}")
            elif isinstance(event, messages.Loaded):
                return event
            elif isinstance(event, messages.LoadFailed):
                self._state.load_error = event.reason
                self._state.load_fix = event.fix
                raise BackendUnavailable(
                    f"Diffusers backend unavailable: {event.reason}. To fix: {event.fix}.",
                    BackendUnavailableData(
                        backend=BACKEND_ID,
                        reason=event.reason,
                        missing=[],
                        install_hint=event.fix,
                    ),
                )

    async def stop_job(self, host: ModelHostProcess) -> None:
        """Ask the host to stop the job; kill it if it has not within the grace."""
        with anyio.move_on_after(self._kill_grace_seconds):
            try:
                await host.send(messages.Cancel())
                while not isinstance(await host.receive(), messages.JobEnding):
                    pass
            except HostGone:
                pass
            else:
                return
        logger.warning(
            "the model host did not stop within %.1f s; killing it", self._kill_grace_seconds
        )
        await self.discard()

    async def discard(self) -> None:
        """Kill the host (its model goes with it); the next job starts a new one."""
        host, self._host = self._host, None
        self._state.loaded = False
        if host is not None:
            await host.kill()

    async def aclose(self) -> None:
        """End the host (at the worker's shutdown): it exits at the end of its input."""
        host, self._host = self._host, None
        self._state.loaded = False
        if host is not None:
            with anyio.CancelScope(shield=True):
                await host.close(self._kill_grace_seconds)


def host_failed(gone: HostGone, context: str) -> SamplerFailed:
    """-32003 for a host that died: how (the signal's meaning), and its log's tail."""
    return SamplerFailed(
        f"The diffusers model host {gone}{context}.",
        SamplerFailedData(exit_code=gone.exit_code, signal=gone.signal, stderr=gone.log_tail),
    )


def _duration(ms: int) -> str:
    seconds = ms / 1000
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
