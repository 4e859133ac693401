"""Core ML Stable Diffusion: one `StableDiffusionSample` run per job."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from protocol.errors import (
    BackendUnavailableData,
    FieldError,
    InvalidParamsData,
    SamplerFailedData,
    TimedOutData,
    UnsupportedFeatureData,
)
from worker.backends.base import JobPlan, Rendered
from worker.backends.coreml.bundle_files import BundleFiles, read_bundle
from worker.backends.coreml.catalog import inpaint_controlnet
from worker.backends.coreml.checks import MODEL_ID_PREFIX, check_image_encoder, locate_installation
from worker.backends.coreml.sampler.command import SamplerCommand
from worker.backends.coreml.sampler.output_layout import (
    OUTPUT_ROOT,
    OutputLayout,
    output_layout,
    prepare_output_path,
)
from worker.backends.coreml.sampler.output_parser import (
    ImageSaved,
    ImageWithheld,
    Loading,
    OtherLine,
    SamplerEvent,
    SamplerOutputParser,
    SamplingStarted,
    StepCompleted,
)
from worker.backends.coreml.sampler.process import SamplerExit, SamplerStartError, run_sampler
from worker.backends.coreml.sampler.schedule import schedule_problems, timestep_count
from worker.backends.coreml.settings import BACKEND_ID, CoreMLSettings
from worker.errors import (
    BackendUnavailable,
    InvalidParams,
    SamplerFailed,
    TimedOut,
    UnsupportedFeature,
)
from worker.host import HostPlatform
from worker.images import RenderedImage, account_for, check_png, select_outputs
from worker.live import LiveSamplers
from worker.parameters import JobParameters
from worker.previews import publish_preview
from worker.progress import ProgressReporter
from worker.scratch import PREFIX, make_directory
from worker.settings import ENV_REDUCE_MEMORY, ENV_TIMEOUT_MS, Settings

logger = logging.getLogger(__name__)

REFERENCE_FILE_NAME = "reference.png"
"""In the job directory, beside (not inside) the sampler's output path."""
_MESSAGE_DETAIL_CHARS = 600
SIGNAL_CAUSES = {
    "SIGKILL": (
        ", sent from outside the worker (on a Mac, most often because memory ran out: close "
        f"other apps, lower count, or set {ENV_REDUCE_MEMORY}=1)"
    ),
    "SIGTRAP": ", a crash inside the sampler (a Swift runtime trap)",
    "SIGILL": ", a crash inside the sampler (a Swift runtime trap)",
    "SIGSEGV": ", a crash inside the sampler",
    "SIGBUS": ", a crash inside the sampler",
    "SIGABRT": ", a crash inside the sampler",
}
"""What a signal says about why the sampler died, in the words of the error message."""


class CoreMLBackend:
    """Renders a job with one supervised `StableDiffusionSample` run in a directory of its
    own, and turns what the sampler printed and wrote into images or a named error."""

    def __init__(
        self, settings: Settings, host: HostPlatform, live: LiveSamplers | None = None
    ) -> None:
        self._settings = settings
        self._section = settings.section(CoreMLSettings)
        self._host = host
        self._live = live if live is not None else LiveSamplers()

    async def aclose(self) -> None:
        """Nothing outlives a job: each sampler run ends with it."""

    def check(self, parameters: JobParameters) -> JobPlan:
        """Refuse, before the job is queued, what the sampler would crash on or fail to
        save after the whole run: -32602 naming the field, the limit and the fix; and
        image-to-image without the encoder it needs: -32001. The plan's step total is
        the `M` of the sampler's `Step N of M` lines."""
        resource_path = parameters.resource_path or self._section.resource_path
        strength = parameters.strength
        if parameters.reference is not None and strength is not None and strength < 1:
            encoder = check_image_encoder(resource_path)
            if encoder.status == "fail":
                raise UnsupportedFeature(
                    f"Unsupported feature: inputImages. {encoder.detail} To fix: "
                    f"{encoder.fix_text}, or leave out the input images.",
                    UnsupportedFeatureData(feature="inputImages", supported=[]),
                )
        errors = [
            FieldError(field=field, message=reason)
            for field, reason in schedule_problems(
                parameters.sampling.step_count, parameters.sampling.scheduler, parameters.strength
            )
        ]
        guidance, model = parameters.sampling.guidance_scale, parameters.model
        if (parameters.controls or parameters.edit) and guidance < 1:
            errors.append(
                FieldError(
                    field="guidanceScale",
                    message=f"{guidance:g} is below 1, and the sampler runs ControlNet (its "
                    "one route to inpainting) with guidance only: below 1 its ControlNet "
                    "inputs do not fit its UNet and Core ML fails at the first step; use 1 "
                    "or more",
                )
            )
        elif model is not None and guidance < model.guidance_min:
            errors.append(
                FieldError(
                    field="guidanceScale",
                    message=f"{guidance:g} is below {model.guidance_min:g} for this bundle: "
                    f"{model.guidance_note}; use {model.guidance_min:g} or more",
                )
            )
        layout = _output_layout(parameters)
        job_name = f"{PREFIX}{os.getpid()}-{'x' * 8}"  # as make_directory names it
        longest_output_path = Path(tempfile.gettempdir(), job_name, OUTPUT_ROOT)
        output_path_bytes = len(str(longest_output_path).encode()) + 2 * layout.climb
        errors += [
            FieldError(field="prompt", message=reason)
            for reason in layout.problems(output_path_bytes)
        ]
        if errors:
            summary = "; ".join(f"{error.field}: {error.message}" for error in errors)
            raise InvalidParams(
                f"Invalid params: {summary}.",
                InvalidParamsData(errors=errors),
            )
        sampling = parameters.sampling
        return JobPlan(
            total_steps=timestep_count(sampling.step_count, sampling.scheduler, strength),
            file_names=tuple(map(parameters.names.delivered, range(parameters.count))),
        )

    async def render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered:
        installation = locate_installation(
            self._section, self._host, resource_path=parameters.resource_path
        )
        if not installation.available or installation.sample_binary is None:
            raise BackendUnavailable(
                f"Core ML backend unavailable: {installation.reason} "
                f"To fix: {installation.install_hint}.",
                BackendUnavailableData(
                    backend=BACKEND_ID,
                    reason=installation.reason,
                    missing=list(installation.missing),
                    install_hint=installation.install_hint,
                ),
            )
        job_directory = make_directory()  # mode 0700
        self._live.directories.add(job_directory)
        try:
            reference_path = None
            if parameters.reference is not None:
                reference_path = job_directory / REFERENCE_FILE_NAME
                reference_path.write_bytes(parameters.reference.png)
            bundle = read_bundle(installation.resource_path)
            command = SamplerCommand(
                binary=installation.sample_binary,
                resource_path=installation.resource_path,
                output_path=prepare_output_path(job_directory, _output_layout(parameters)),
                parameters=parameters,
                reference_path=reference_path,
                pipeline=bundle.pipeline,
                controlnets=_control_inputs(parameters, bundle, job_directory),
            )
            withheld: list[int] = []
            outcome, stdout_tail = await self._run(command, parameters, progress, withheld)
            _raise_for_failure(outcome, parameters, stdout_tail)
            images, warnings = _collect(job_directory, parameters, withheld)
        finally:
            shutil.rmtree(job_directory, ignore_errors=True)
            self._live.directories.discard(job_directory)
        return Rendered(
            images=images,
            warnings=warnings,
            model_id=f"{parameters.model.result_id if parameters.model else MODEL_ID_PREFIX}:"
            f"{parameters.sampling.compute_units}",
            backend=BACKEND_ID,
            sample_binary=str(installation.sample_binary),
            resource_path=str(installation.resource_path),
            duration_ms=outcome.duration_ms,
            width=parameters.width,
            height=parameters.height,
            compute_units=parameters.sampling.compute_units,
        )

    async def _run(
        self,
        command: SamplerCommand,
        parameters: JobParameters,
        progress: ProgressReporter,
        withheld: list[int],
    ) -> tuple[SamplerExit, list[str]]:
        parser = SamplerOutputParser()
        other_lines: list[str] = []
        saved_steps, steps_to_preview = anyio.create_memory_object_stream[StepCompleted](math.inf)

        def handle(events: list[SamplerEvent]) -> None:
            for event in events:
                if isinstance(event, OtherLine):
                    other_lines.append(event.text)
                    del other_lines[:-20]
                if isinstance(event, StepCompleted) and event.saved:
                    saved_steps.send_nowait(event)
                report(event, progress, withheld)

        progress.loading("Starting StableDiffusionSample")
        outcome: SamplerExit | SamplerStartError
        async with anyio.create_task_group() as previews:
            previews.start_soon(_publish_previews, steps_to_preview, command, parameters, progress)
            try:
                outcome = await run_sampler(
                    command.argv(),
                    timeout_seconds=parameters.sampling.timeout_ms / 1000,
                    kill_grace_seconds=parameters.kill_grace_ms / 1000,
                    on_output=lambda data: handle(parser.feed(data)),
                    live=self._live,
                )
            except SamplerStartError as exc:  # raised outside the group, not in a group
                outcome = exc
            finally:
                saved_steps.close()  # the previews already saved are still sent
        if isinstance(outcome, SamplerStartError):
            raise SamplerFailed(
                f"StableDiffusionSample could not be started ({outcome}); check that "
                f"{command.binary} is a sampler built for this machine.",
                SamplerFailedData(exit_code=None, signal=None, stderr=str(outcome)),
            ) from outcome
        handle(parser.finish())
        return outcome, other_lines


def _control_inputs(
    parameters: JobParameters, bundle: BundleFiles, job_directory: Path
) -> tuple[tuple[str, Path], ...]:
    """The ControlNets the sampler runs, each with its image written beside (not inside)
    its output path: for a masked edit the bundle's inpaint model first, then the
    request's controls, in their order."""
    inputs = [(control.controlnet.name, control.png) for control in parameters.controls]
    edit, reference = parameters.edit, parameters.reference
    if edit is not None and reference is not None:
        from worker.backends.coreml.inpaint_control import inpaint_control_png

        net = inpaint_controlnet(bundle)
        assert net is not None  # a model without one refuses a mask before it is queued
        inputs.insert(
            0, (net.name, inpaint_control_png(reference.png, edit.mask_png, net.input_size))
        )
    written = []
    for index, (name, png) in enumerate(inputs):
        path = job_directory / f"control.{index}.png"
        path.write_bytes(png)
        written.append((name, path))
    return tuple(written)


async def _publish_previews(
    steps: MemoryObjectReceiveStream[StepCompleted],
    command: SamplerCommand,
    parameters: JobParameters,
    progress: ProgressReporter,
) -> None:
    """A `preview` per intermediate image, as the sampler saves them (off the event loop:
    each is a PNG to read and shrink)."""
    async with steps:
        async for step in steps:
            names = parameters.names
            for index in range(parameters.count):
                await publish_preview(
                    command.output_path / names.written(index, step.index),
                    names.preview(index, step.index),
                    parameters.preview_dir,
                    progress,
                    step.completed,
                    index,
                    parameters.source_overlay,
                )


def report(event: SamplerEvent, progress: ProgressReporter, withheld: list[int]) -> None:
    """What one of the sampler's lines says, as the job's progress; the images the safety
    checker withheld into `withheld`."""
    match event:
        case Loading(message=message):
            progress.loading(message)
        case SamplingStarted():
            progress.sampling(0, progress.total_steps, None)
        case StepCompleted(completed=completed, total=total, steps_per_second=rate):
            progress.sampling(completed, total, rate)
        case ImageSaved(file_name=name):
            progress.saving(f"Saved {name}")
        case ImageWithheld(index=index):
            withheld.append(index)
        case _:
            pass


def _output_layout(parameters: JobParameters) -> OutputLayout:
    return output_layout(
        parameters.prompt,
        image_count=parameters.count,
        seed=parameters.seed,
        strength=parameters.strength,
    )


def _raise_for_failure(
    outcome: SamplerExit, parameters: JobParameters, stdout_tail: list[str]
) -> None:
    if outcome.timed_out:
        timeout_ms = parameters.sampling.timeout_ms
        raise TimedOut(
            f"StableDiffusionSample did not finish within {timeout_ms} ms and was stopped. "
            f"Lower stepCount or count, or raise timeoutMs (or {ENV_TIMEOUT_MS}).",
            TimedOutData(timeout_ms=timeout_ms),
        )
    if outcome.succeeded:
        return
    if outcome.signal is not None:
        # A signal is explained by stderr and the signal; stdout holds progress only.
        what = f"died from {outcome.signal}{SIGNAL_CAUSES.get(outcome.signal, '')}"
        detail = outcome.stderr_tail or "it printed nothing on stderr"
    else:
        if outcome.exit_code == 64:
            what = (
                "rejected its arguments (exit code 64); the sampler build may not match this worker"
            )
        else:
            what = f"exited with code {outcome.exit_code}"
        # Without stderr, the lines of stdout that are not progress may say why.
        detail = outcome.stderr_tail or "\n".join(stdout_tail) or "it printed nothing"
    detail = _one_paragraph(detail)[-_MESSAGE_DETAIL_CHARS:]
    raise SamplerFailed(
        f"StableDiffusionSample {what}: {detail}",
        SamplerFailedData(
            exit_code=outcome.exit_code, signal=outcome.signal, stderr=outcome.stderr_tail
        ),
    )


def _one_paragraph(text: str) -> str:
    return re.sub(r"\s*\n\s*", " | ", text.strip())


def _collect(
    job_directory: Path, parameters: JobParameters, withheld: list[int]
) -> tuple[list[RenderedImage], list[str]]:
    paths = select_outputs(job_directory / OUTPUT_ROOT, parameters.count, parameters.seed)
    images = []
    for position, path in enumerate(paths):
        png, width, height = check_png(path, (parameters.width, parameters.height))
        index = _image_index(path.name, parameters, fallback=position)
        name = parameters.names.delivered(index)
        images.append(RenderedImage(name, index, png, width, height))
    why_none = "the sampler exited successfully but wrote no PNG"
    return images, account_for(images, withheld, parameters.count, why_none)


def _image_index(file_name: str, parameters: JobParameters, fallback: int) -> int:
    """The sampler puts `.<index>` before `.<seed>` in the name when it makes several."""
    if parameters.count == 1:
        return 0
    match = re.search(rf"\.(\d+)(\.str\d+)?\.{parameters.seed}\.final\.png$", file_name)
    return int(match.group(1)) if match else fallback
