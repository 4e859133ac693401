"""Hugging Face diffusers: each job rendered by a model host that keeps the pipeline loaded.

The host starts on the first job and stays warm; jobs go to it one at a time. A cancel
or a timeout stops it at the next step boundary; a host that does not stop within the
kill grace is killed, and one that dies answers its job -32003. Either way the next job
gets a fresh host. After SYSTEMSCULPT_LOCAL_DIFFUSERS_IDLE_MS without a job, the host
exits by itself and frees the memory.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import anyio

from protocol.errors import (
    BackendUnavailableData,
    FieldError,
    InvalidParamsData,
    TimedOutData,
)
from protocol.models import PREVIEW_MAX_SIDE, ModelHostStatus
from worker.backends.base import JobPlan, Rendered
from worker.backends.diffusers.checks import (
    ModelLocation,
    install_extra_hint,
    locate_model,
    missing_modules,
)
from worker.backends.diffusers.follower import JobFollower, image_name
from worker.backends.diffusers.host.batches import batches_work
from worker.backends.diffusers.host.families import IMAGE_TO_IMAGE, INPAINTING, TEXT_TO_IMAGE
from worker.backends.diffusers.host.messages import HostControl, HostJob
from worker.backends.diffusers.host_process import HostGone
from worker.backends.diffusers.settings import BACKEND_ID, DiffusersSettings
from worker.backends.diffusers.supervisor import ModelHostSupervisor, host_failed
from worker.errors import BackendUnavailable, InvalidParams, TimedOut
from worker.images import account_for
from worker.live import LiveSamplers
from worker.parameters import JobParameters
from worker.progress import ProgressReporter
from worker.scratch import make_directory
from worker.settings import ENV_TIMEOUT_MS, Settings

REFERENCE_FILE_NAME = "reference.png"
MASK_FILE_NAME = "mask.png"


class DiffusersBackend:
    """Renders jobs in a supervised model host that keeps the pipeline loaded."""

    def __init__(self, settings: Settings, live: LiveSamplers | None = None) -> None:
        self._settings = settings.section(DiffusersSettings)
        self._live = live if live is not None else LiveSamplers()
        self.supervisor = ModelHostSupervisor(
            self._settings,
            self._live,
            safety=not settings.disable_safety,
            kill_grace_ms=settings.kill_grace_ms,
        )
        self._one_job = anyio.Lock()

    def status(self) -> ModelHostStatus:
        """The model host as it is now, for `capabilities`."""
        return self.supervisor.status()

    def check(self, parameters: JobParameters) -> JobPlan:
        """-32002 when the extra or the model is missing; -32602 for a strength that
        leaves no step to run. The plan counts the steps as the pipeline runs them (the
        host confirms the total when it accepts the job)."""
        self._usable_model(parameters)
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
        # The host makes a job's images in one pass where it has room; it says how many
        # steps that takes when it accepts the job.
        family = parameters.model.family if parameters.model else None
        mode = (
            TEXT_TO_IMAGE
            if parameters.reference is None
            else IMAGE_TO_IMAGE
            if parameters.edit is None
            else INPAINTING
        )
        together = batches_work(family or "sd1", mode) and not parameters.sampling.reduce_memory
        passes = 1 if together else parameters.count
        return JobPlan(
            total_steps=pipeline_steps(parameters) * passes,
            file_names=tuple(image_name(parameters, i) for i in range(parameters.count)),
        )

    def _usable_model(self, parameters: JobParameters) -> ModelLocation:
        """The job's model (the configured one where the job names none), if it can run."""
        missing = missing_modules()
        if missing:
            reason = f"the diffusers extra is not installed (missing: {', '.join(missing)})"
            raise BackendUnavailable(
                f"Diffusers backend unavailable: {reason}. To fix: {install_extra_hint()}.",
                BackendUnavailableData(
                    backend=BACKEND_ID,
                    reason=reason,
                    missing=missing,
                    install_hint=install_extra_hint(),
                ),
            )
        model = parameters.model
        location = (
            model.details
            if model is not None and isinstance(model.details, ModelLocation)
            else locate_model(self._settings)
        )
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

    async def render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered:
        location = self._usable_model(parameters)
        async with self._one_job:
            started = time.monotonic()
            job_directory = make_directory()
            self._live.directories.add(job_directory)
            try:
                job = await self._run(location, parameters, progress, job_directory)
            finally:
                shutil.rmtree(job_directory, ignore_errors=True)
                self._live.directories.discard(job_directory)
        warnings = account_for(
            job.images, job.withheld, parameters.count, "the model host made no image"
        )
        return Rendered(
            images=job.images,
            warnings=warnings,
            model_id=f"{BACKEND_ID}/{location.label}:{self.supervisor.device}",
            backend=BACKEND_ID,
            sample_binary=None,
            resource_path=str(location.path),
            duration_ms=round((time.monotonic() - started) * 1000),
            width=parameters.width,
            height=parameters.height,
            device=self.supervisor.device,
            dtype=self.supervisor.dtype,
            dtype_reason=self.supervisor.dtype_reason,
        )

    async def _run(
        self,
        location: ModelLocation,
        parameters: JobParameters,
        progress: ProgressReporter,
        job_directory: Path,
    ) -> JobFollower:
        host, accepted = await self.supervisor.start_job(
            location, host_job(parameters, job_directory), progress
        )
        progress.expect(accepted.total_steps)
        progress.sampling(0, accepted.total_steps, None)
        follower = JobFollower(parameters, progress)
        timeout_ms = parameters.sampling.timeout_ms
        try:
            # From the moment the loaded model takes the job: the load has its own limit.
            with anyio.move_on_after(timeout_ms / 1000) as deadline:
                await follower.follow(host)
            if deadline.cancelled_caught:
                raise TimedOut(
                    f"The job did not finish within {timeout_ms} ms of sampling (the model's "
                    "load is not counted) and was stopped. Lower stepCount, count or the "
                    f"size, or raise timeoutMs (or {ENV_TIMEOUT_MS}).",
                    TimedOutData(timeout_ms=timeout_ms),
                )
        except HostGone as exc:
            await self.supervisor.discard()
            raise host_failed(exc, ". The next job starts a new one") from exc
        except BaseException:  # cancelled, timed out, or a bad image: stop the rest
            if not follower.ended:
                with anyio.CancelScope(shield=True):
                    await self.supervisor.stop_job(host)
            raise
        return follower

    async def aclose(self) -> None:
        """End the host (at the worker's shutdown)."""
        await self.supervisor.aclose()


def host_job(parameters: JobParameters, job_directory: Path) -> HostJob:
    """The job as the host runs it: the record's own fields, and where its files go."""
    files: dict[str, str | None] = {"reference_path": None, "mask_path": None}
    if parameters.reference is not None:
        files["reference_path"] = _written(
            job_directory / REFERENCE_FILE_NAME, parameters.reference.png
        )
    if parameters.edit is not None:
        files["mask_path"] = _written(job_directory / MASK_FILE_NAME, parameters.edit.mask_png)
    controls = [
        HostControl(
            path=str(control.controlnet.path),
            image_path=_written(job_directory / f"control.{index}.png", control.png),
            weight=control.weight,
            start=control.start,
            end=control.end,
        )
        for index, control in enumerate(parameters.controls)
    ]
    return HostJob.model_validate(parameters).model_copy(
        update={
            "output_dir": str(job_directory),
            "controlnets": controls,
            "preview_side": PREVIEW_MAX_SIDE,
            "tiny_autoencoder_path": _tiny_autoencoder(parameters),
            **files,
        }
    )


def _tiny_autoencoder(parameters: JobParameters) -> str | None:
    model = parameters.model
    if parameters.preview_decoder != "taesd" or model is None or model.tiny_autoencoder is None:
        return None
    return str(model.tiny_autoencoder)


def _written(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def pipeline_steps(parameters: JobParameters) -> int:
    """The steps the pipeline runs for one image: its scheduler's timesteps (PNDM has one
    more than asked), cut by a reference's strength as image-to-image cuts them (SD3 keeps
    the fraction of a step that Stable Diffusion rounds away)."""
    steps = parameters.sampling.step_count
    length = steps + 1 if parameters.sampling.scheduler == "pndm" else steps
    if parameters.strength is None:
        return length
    if parameters.model is not None and parameters.model.family == "sd3":
        return length - int(max(steps - steps * parameters.strength, 0))
    return length - (steps - min(int(steps * parameters.strength), steps))
