"""Hugging Face diffusers: a model host process that keeps the pipeline loaded.

The host starts on the first job and stays warm; jobs go to it one at a time. A cancel
or a timeout stops it at the next step boundary; a host that does not stop within the
kill grace is killed, and one that dies answers its job -32003. Either way the next job
gets a fresh host. After SYSTEMSCULPT_LOCAL_DIFFUSERS_IDLE_MS without a job, the host
exits by itself and frees the memory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from protocol.errors import (
    BackendUnavailableData,
    FieldError,
    InvalidParamsData,
    SamplerFailedData,
    TimedOutData,
)
from protocol.models import ModelHostStatus
from worker.backends import DIFFUSERS_BACKEND_ID as BACKEND_ID
from worker.backends.base import Rendered
from worker.backends.diffusers_checks import (
    INSTALL_EXTRA,
    ModelLocation,
    locate_model,
    missing_modules,
    model_id,
    not_loaded,
)
from worker.backends.model_host_process import HostGone, ModelHostProcess, host_command
from worker.errors import BackendUnavailable, InvalidParams, SamplerFailed, TimedOut
from worker.images import RenderedImage, account_for, check_png
from worker.live import LiveSamplers
from worker.model_host import messages
from worker.model_host.messages import HostJob, image_seed
from worker.parameters import JobParameters
from worker.previews import Thumbnail, make_thumbnail
from worker.progress import ProgressReporter
from worker.sampler.naming import final_name
from worker.settings import ENV_TIMEOUT_MS, Settings

logger = logging.getLogger(__name__)

JOB_DIRECTORY_PREFIX = "studio-imagegen-"
REFERENCE_FILE_NAME = "reference.png"


@dataclass
class HostState:
    """What `capabilities` reports of the model host."""

    device: str = ""
    dtype: str = ""
    last_load_ms: int | None = None
    pid: int | None = None
    safety_checker: bool = False
    loaded: bool = False
    load_error: str = ""
    """Why the last load failed; empty after a load that worked."""
    load_fix: str = ""


@dataclass
class _JobOutcome:
    images: list[RenderedImage] = field(default_factory=list)
    withheld: list[int] = field(default_factory=list)
    ended: bool = False
    """The host has said the job is over (done or failed): nothing to stop."""


class DiffusersBackend:
    """Renders jobs in a supervised model host that keeps the pipeline loaded."""

    def __init__(self, settings: Settings, live: LiveSamplers | None = None) -> None:
        self._settings = settings
        self._live = live if live is not None else LiveSamplers()
        self._host: ModelHostProcess | None = None
        self._state = HostState()
        self._one_job = anyio.Lock()

    # --- what capabilities and the checks see ---------------------------------

    def status(self) -> ModelHostStatus:
        host, state = self._host, self._state
        if host is None or host.exited or not state.loaded:
            return not_loaded(self._settings, state.last_load_ms, state.load_error)
        return ModelHostStatus(
            loaded=True,
            device=state.device,
            dtype=state.dtype,
            last_load_ms=state.last_load_ms,
            idle_unload_ms=self._settings.diffusers_idle_ms,
            pid=host.pid,
        )

    @property
    def load_fix(self) -> str:
        """What fixes the last failed load (empty when it did not fail)."""
        return self._state.load_fix

    def check(self, parameters: JobParameters) -> None:
        """-32002 when the extra or the model is missing; -32602 for a strength that
        leaves no step to run."""
        self._usable_model()
        strength = parameters.strength
        step_count = parameters.sampling.step_count
        if strength is not None and int(step_count * strength) < 1:
            lowest = -(-1000 // step_count) / 1000
            reason = (
                f"with {step_count} steps a strength of {strength:g} runs no step; use a "
                f"strength of at least {lowest:g} or more steps"
            )
            raise InvalidParams(
                f"Invalid params: strength: {reason}.",
                InvalidParamsData(errors=[FieldError(field="strength", message=reason)]),
            )

    def _usable_model(self) -> ModelLocation:
        missing = missing_modules()
        if missing:
            reason = f"the diffusers extra is not installed (missing: {', '.join(missing)})"
            raise BackendUnavailable(
                f"Diffusers backend unavailable: {reason}. To fix: {INSTALL_EXTRA}.",
                BackendUnavailableData(
                    backend=BACKEND_ID, reason=reason, missing=missing, install_hint=INSTALL_EXTRA
                ),
            )
        location = locate_model(self._settings)
        if not location.usable:
            raise BackendUnavailable(
                f"Diffusers backend unavailable: {location.problem}. To fix: {location.fix}.",
                BackendUnavailableData(
                    backend=BACKEND_ID,
                    reason=location.problem,
                    missing=[location.text] if location.path is None else [],
                    install_hint=location.fix,
                ),
            )
        return location

    # --- rendering ---------------------------------------------------------------

    async def render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered:
        location = self._usable_model()
        async with self._one_job:
            started = time.monotonic()
            job_directory = Path(tempfile.mkdtemp(prefix=JOB_DIRECTORY_PREFIX))
            self._live.directories.add(job_directory)
            try:
                timeout_ms = parameters.sampling.timeout_ms
                with anyio.move_on_after(timeout_ms / 1000) as deadline:
                    outcome = await self._render(location, parameters, progress, job_directory)
                if deadline.cancelled_caught:
                    raise TimedOut(
                        f"The diffusers model host did not finish within {timeout_ms} ms and "
                        f"was stopped. Lower stepCount, count or the size, or raise timeoutMs "
                        f"(or {ENV_TIMEOUT_MS}).",
                        TimedOutData(timeout_ms=timeout_ms),
                    )
            finally:
                shutil.rmtree(job_directory, ignore_errors=True)
                self._live.directories.discard(job_directory)
        warnings = account_for(
            outcome.images, outcome.withheld, parameters.count, "the model host made no image"
        )
        return Rendered(
            images=outcome.images,
            warnings=warnings,
            model_id=model_id(location, self._state.device),
            backend=BACKEND_ID,
            sample_binary=None,
            resource_path=str(location.path),
            duration_ms=round((time.monotonic() - started) * 1000),
            width=parameters.width,
            height=parameters.height,
        )

    async def _render(
        self,
        location: ModelLocation,
        parameters: JobParameters,
        progress: ProgressReporter,
        job_directory: Path,
    ) -> _JobOutcome:
        job = _host_job(parameters, job_directory)
        grace = parameters.kill_grace_ms / 1000
        host = await self._host_with_job(location, job, progress, grace)
        outcome = _JobOutcome()
        try:
            await self._follow(host, parameters, progress, outcome)
        except HostGone as exc:
            await self._discard_host()
            raise _host_failed(exc, ". The next job starts a new one") from exc
        except BaseException:  # cancelled, timed out, or a bad image: stop the rest
            if not outcome.ended:
                with anyio.CancelScope(shield=True):
                    await self._stop_job(host, grace)
            raise
        return outcome

    async def _host_with_job(
        self, location: ModelLocation, job: HostJob, progress: ProgressReporter, grace: float
    ) -> ModelHostProcess:
        """A loaded host that has accepted `job`. A host that went idle and exited just
        as the job came is replaced, and the job sent again."""
        for _attempt in range(2):
            host = await self._loaded_host(location, progress)
            try:
                await host.send(job.to_message())
                accepted = await host.receive()
            except HostGone:
                accepted = {"type": messages.UNLOADED}
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._stop_job(host, grace)
                raise
            if accepted["type"] == messages.ACCEPTED:
                progress.expect(int(accepted["totalSteps"]))
                progress.sampling(0, int(accepted["totalSteps"]), None)
                return host
            await self._discard_host()
            if accepted["type"] != messages.UNLOADED:
                raise SamplerFailed(
                    f"The diffusers model host answered a job with {accepted['type']!r} "
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
        if self._host is not None and self._host.exited:
            await self._discard_host()  # it unloaded itself after being idle
        if self._host is not None:
            return self._host
        assert location.path is not None
        settings = self._settings
        if self._state.last_load_ms is not None:
            last = f" (the last load took {self._state.last_load_ms / 1000:.1f} s)"
        else:
            last = ""
        progress.loading(f"Starting the model host for {location.label}{last}")
        host = await ModelHostProcess.start(
            host_command(
                location.path,
                location.label,
                settings.diffusers_device,
                settings.diffusers_dtype,
                settings.diffusers_idle_ms,
                safety=not settings.disable_safety,
            ),
            self._live,
        )
        self._host = host
        try:
            while True:
                event = await host.receive()
                if event["type"] == messages.LOADING:
                    progress.loading(f"{event['message']}{last}")
                elif event["type"] == messages.LOADED:
                    break
                elif event["type"] == messages.LOAD_FAILED:
                    self._state.load_error = str(event["reason"])
                    self._state.load_fix = str(event["fix"])
                    raise BackendUnavailable(
                        f"Diffusers backend unavailable: {event['reason']}. To fix: "
                        f"{event['fix']}.",
                        BackendUnavailableData(
                            backend=BACKEND_ID,
                            reason=str(event["reason"]),
                            missing=[],
                            install_hint=str(event["fix"]),
                        ),
                    )
        except HostGone as exc:
            await self._discard_host()
            raise _host_failed(exc, f" while loading {location.label}") from exc
        except BaseException:  # a failed load, or cancelled while loading: no half host
            with anyio.CancelScope(shield=True):
                await self._discard_host()
            raise
        self._state = HostState(
            device=str(event["device"]),
            dtype=str(event["dtype"]),
            last_load_ms=int(event["loadMs"]),
            pid=host.pid,
            safety_checker=bool(event["safetyChecker"]),
            loaded=True,
        )
        logger.info(
            "model host %d loaded %s on %s (%s) in %d ms",
            host.pid,
            location.label,
            self._state.device,
            self._state.dtype,
            self._state.last_load_ms,
        )
        progress.loading(
            f"Loaded {location.label} on {self._state.device} in {event['loadMs'] / 1000:.1f} s"
        )
        return host

    async def _follow(
        self,
        host: ModelHostProcess,
        parameters: JobParameters,
        progress: ProgressReporter,
        outcome: _JobOutcome,
    ) -> None:
        """The job's events until its end: progress, previews, images into `outcome`."""
        started = time.monotonic()
        while True:
            event = await host.receive()
            kind = event["type"]
            if kind == messages.STEP:
                step = int(event["step"])
                rate = step / max(time.monotonic() - started, 1e-6)
                progress.sampling(step, int(event["totalSteps"]), rate)
            elif kind == messages.PREVIEW:
                await _publish_preview(event, parameters, progress)
            elif kind == messages.IMAGE:
                _take_image(event, parameters, progress, outcome)
            elif kind == messages.DONE:
                outcome.ended = True
                host.trim_log()
                for image in outcome.images:
                    progress.saving(f"Saved {image.file_name}")
                return
            elif kind == messages.FAILED:
                outcome.ended = True
                raise SamplerFailed(
                    f"The diffusers pipeline failed: {event['reason']}"
                    f"{_memory_hint(str(event['reason']))}",
                    SamplerFailedData(exit_code=None, signal=None, stderr=str(event["reason"])),
                )

    async def _stop_job(self, host: ModelHostProcess, grace_seconds: float) -> None:
        """Ask the host to stop the job; kill it if it has not within the grace."""
        with anyio.move_on_after(grace_seconds):
            try:
                await host.send({"type": messages.CANCEL})
                while (await host.receive())["type"] not in messages.JOB_ENDINGS:
                    pass
            except HostGone:
                pass
            else:
                return
        logger.warning("the model host did not stop within %.1f s; killing it", grace_seconds)
        await self._discard_host()

    async def _discard_host(self) -> None:
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
                await host.close(self._settings.kill_grace_ms / 1000)


def _host_failed(gone: HostGone, context: str) -> SamplerFailed:
    """-32003 for a host that died: how (the signal's meaning), and its log's tail."""
    return SamplerFailed(
        f"The diffusers model host {gone}{context}.",
        SamplerFailedData(exit_code=gone.exit_code, signal=gone.signal, stderr=gone.log_tail),
    )


def _host_job(parameters: JobParameters, job_directory: Path) -> HostJob:
    reference_path = None
    if parameters.reference is not None:
        reference_path = job_directory / REFERENCE_FILE_NAME
        reference_path.write_bytes(parameters.reference.png)
    sampling = parameters.sampling
    return HostJob(
        prompt=parameters.prompt,
        negative_prompt=parameters.negative_prompt,
        seed=parameters.seed,
        count=parameters.count,
        step_count=sampling.step_count,
        guidance_scale=sampling.guidance_scale,
        scheduler=sampling.scheduler,
        width=parameters.width,
        height=parameters.height,
        output_dir=str(job_directory),
        reduce_memory=sampling.reduce_memory,
        strength=parameters.strength,
        reference_path=str(reference_path) if reference_path else None,
        preview_every=parameters.preview_every,
    )


def image_name(parameters: JobParameters, index: int, seed: int, step: int | None = None) -> str:
    """Core ML's name for the image (its last path part), with the image's own seed."""
    name = final_name(
        parameters.prompt,
        index=index,
        image_count=parameters.count,
        seed=seed,
        strength=parameters.strength,
        step=step,
    )
    return name.rsplit("/", 1)[-1]


def _take_image(
    event: dict[str, Any],
    parameters: JobParameters,
    progress: ProgressReporter,
    outcome: _JobOutcome,
) -> None:
    index = int(event["index"])
    if event.get("withheld"):
        outcome.withheld.append(index)
        return
    seed = int(event["seed"])
    png, width, height = check_png(Path(event["path"]), (parameters.width, parameters.height))
    name = image_name(parameters, index, seed)
    outcome.images.append(RenderedImage(name, index, png, width, height, seed=seed))


async def _publish_preview(
    event: dict[str, Any], parameters: JobParameters, progress: ProgressReporter
) -> None:
    """A `preview` of the image the host decoded at this step, named as Core ML names
    its intermediate images (off the event loop: a PNG to read and shrink)."""
    index, step = int(event["index"]), int(event["step"])
    seed = image_seed(parameters.seed, index)
    name = image_name(parameters, index, seed, step - 1).removesuffix(".png") + ".preview.png"
    thumbnail = await anyio.to_thread.run_sync(
        _thumbnail_of, Path(event["path"]), parameters.preview_dir, name
    )
    if thumbnail is not None:
        progress.preview(step, int(event["totalSteps"]), index, thumbnail)


def _thumbnail_of(source: Path, directory: Path | None, name: str) -> Thumbnail | None:
    try:
        png = source.read_bytes()
    except OSError as exc:
        logger.warning("a preview was skipped: %s", exc)
        return None
    return make_thumbnail(png, directory, name)


def _memory_hint(reason: str) -> str:
    if "out of memory" in reason.lower() or "MemoryError" in reason:
        return (
            "; memory ran out: lower count or the image size, set "
            "SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY=1, or use float16"
        )
    return ""
