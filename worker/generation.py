"""`generate`: from validated params to the result Studio receives.

Checks what the request asks for (unsupported controls, configuration, output directory)
before anything runs, resolves the effective parameters, lets the configured backend
render, then annotates and delivers the images.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread

from protocol.errors import (
    ConfigInvalidData,
    FieldError,
    InvalidParamsData,
    OutputNotWrittenData,
)
from protocol.models import (
    GeneratedImage,
    GenerateParams,
    GenerateResult,
    GenerationMetadata,
    ParameterSource,
    Scheduler,
)
from worker import __version__
from worker.backends.base import Backend, Rendered
from worker.backends.registry import BY_ID
from worker.catalog import choose_model, list_models
from worker.context import RequestContext
from worker.controls import prepare_controls
from worker.errors import ConfigInvalid, InvalidParams, OutputNotWritten
from worker.file_names import NAME_MAX_BYTES, name_too_long
from worker.host import HostPlatform
from worker.images import (
    safe_file_name,
    to_base64,
    with_text_chunks,
    write_without_clobbering,
)
from worker.jobs import Job, JobQueue
from worker.live import LiveSamplers
from worker.masks import edits_asked, prepare_edit
from worker.models import Model
from worker.parameters import JobParameters, requested_ratio, resolve_parameters
from worker.progress import ProgressReporter
from worker.reference import prepare_reference
from worker.settings import Settings
from worker.sizes import (
    SizeOption,
    SizeTable,
    choose_ratio,
    choose_size,
    far_from_native,
    ratio_of,
)

A1111_SAMPLER_NAMES: dict[Scheduler, str] = {
    "pndm": "PNDM",
    "dpmpp": "DPM++ 2M",
    "euler": "Euler",
    "euler_a": "Euler a",
    "ddim": "DDIM",
    "dpmpp_karras": "DPM++ 2M Karras",
    "euler_karras": "Euler Karras",
    "euler_a_trailing": "Euler a Trailing",
    "lcm": "LCM",
    "flow_match": "Euler Flow Match",
}
PARAMETERS_KEYWORD = "parameters"
JSON_KEYWORD = "studio-imagegen"


class Generator:
    """Serves `generate`: picks the model, checks, queues, renders with the model's
    backend (each made on its first job), delivers."""

    def __init__(self, settings: Settings, host: HostPlatform, live: LiveSamplers) -> None:
        self._settings = settings
        self._host = host
        self._live = live
        self.backends: dict[str, Backend] = {}
        """The backends jobs have used, by id: what capabilities reads the live state of."""

    def _backend_for(self, model: Model) -> Backend:
        backend = self.backends.get(model.backend)
        if backend is None:
            plugin = BY_ID[model.backend]
            backend = self.backends[model.backend] = plugin.load(
                self._settings, self._host, self._live
            )
        return backend

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()

    async def generate(
        self, context: RequestContext, params: GenerateParams, queue: JobQueue
    ) -> GenerateResult:
        check_request(params, self._settings)  # an unknown backend is a -32007 here
        models = list_models(self._settings, self._host, self.backends)
        model = choose_model(models, params.model)
        model.check_editing(edits_asked(params))
        nets = model.controlnets_for(params.controls)
        loras = model.loras_for(params.loras)
        model.check_clip_skip(params.clip_skip)
        backend = self._backend_for(model)
        sizes = model.sizes
        size = _choose(sizes, params)
        progress = ProgressReporter(context, params.run_id, expected_total_steps=0)
        job = Job(request_id=context.request_id, run_id=params.run_id, progress=progress)
        with queue.arrival(job):  # its place in line is its arrival, not its readiness
            reference = edit = None
            with queue.preparing(job):  # a cancel may come while a large photo is decoded
                if edits_asked(params):
                    size, reference, edit = await anyio.to_thread.run_sync(
                        prepare_edit, params, sizes, size
                    )
                elif params.input_images:
                    reference = await anyio.to_thread.run_sync(
                        prepare_reference, params.input_images[0], 0, (size.width, size.height)
                    )
                controls = await anyio.to_thread.run_sync(
                    prepare_controls, params.controls, nets, (size.width, size.height)
                )
            parameters = resolve_parameters(
                params,
                self._settings,
                reference,
                size,
                sizes.manifest_path,
                model,
                edit,
                controls,
                loras,
            )
            model.check_controls(
                parameters.sampling.scheduler, reference is not None, edit is not None
            )
            plan = backend.check(parameters)
            if params.output == "path":
                _check_names(plan.file_names)
            progress.expect(plan.total_steps)
            size_warning = far_from_native(sizes, size)
            if size_warning:
                progress.advise(size_warning)
            rendered, started = await queue.run(
                job, lambda: render_timed(backend, parameters, progress)
            )
            result = deliver(params, parameters, rendered, started, progress.preview_paths)
            if size_warning:
                result.warnings.insert(0, size_warning)
            return result


def check_request(params: GenerateParams, settings: Settings) -> None:
    """Refuse, before anything runs, what this worker cannot do as asked."""
    problems = settings.problems
    if problems:
        first = problems[0]
        described = "; ".join(problem.describe() for problem in problems)
        raise ConfigInvalid(
            f"Configuration invalid: {described}. Fix the environment and restart the worker.",
            ConfigInvalidData(variable=first.variable, value=first.value, reason=first.reason),
        )
    if params.output == "path":
        _check_output_dir(params.output_dir)


def _check_output_dir(output_dir: str | None) -> None:
    path = Path(output_dir or "")
    problem = None
    if not path.is_absolute():
        problem = "must be an absolute path"
    elif not path.is_dir():
        problem = "is not an existing directory; create it first"
    else:
        problem = _unwritable(path)
    if problem:
        raise InvalidParams(
            f"Invalid params: outputDir {output_dir!r} {problem}.",
            InvalidParamsData(errors=[FieldError(field="outputDir", message=problem)]),
        )


def _choose(sizes: SizeTable, params: GenerateParams) -> SizeOption:
    if params.width is not None and params.height is not None:
        return choose_size(sizes, params.width, params.height)
    return choose_ratio(sizes, requested_ratio(params))


def _check_names(names: tuple[str, ...]) -> None:
    """-32602 for an image name that no file system could hold, before anything runs."""
    size = max((len(name.encode()) for name in names), default=0)
    if size > NAME_MAX_BYTES:
        reason = name_too_long(size)
        raise InvalidParams(
            f"Invalid params: prompt: {reason}.",
            InvalidParamsData(errors=[FieldError(field="prompt", message=reason)]),
        )


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in `directory`, found by creating one (permissions alone
    say nothing of /proc, a read-only mount or a full disk)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".studio-imagegen-probe-", dir=directory)
    except OSError as exc:
        return f"does not take new files ({exc.strerror or exc}); choose another directory"
    os.close(fd)
    os.unlink(probe)
    return None


async def render_timed(
    backend: Backend, parameters: JobParameters, progress: ProgressReporter
) -> tuple[Rendered, float]:
    """The backend's images, and when the work on them started (the queue excluded); the
    progress kept alive meanwhile."""
    started = time.monotonic()
    outcome: Rendered | Exception
    async with anyio.create_task_group() as heartbeat:
        heartbeat.start_soon(progress.keep_alive)
        try:
            outcome = await backend.render(parameters, progress)
        except Exception as exc:  # raised as it is below, not inside an exception group
            outcome = exc
        heartbeat.cancel_scope.cancel()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome, started


def deliver(
    params: GenerateParams,
    parameters: JobParameters,
    rendered: Rendered,
    started: float,
    previews: list[Path] | None = None,
) -> GenerateResult:
    """Annotate the images and hand them over as the request asked (`previews`: the files
    its previews were written to, taken back if its images cannot all be written). No
    await in here: once a job has rendered, nothing can cancel it halfway through."""
    images = []
    written: list[Path] = list(previews or [])
    edit, overlay = parameters.edit, parameters.source_overlay
    width, height = edit.crop if edit else (rendered.width, rendered.height)
    for image in rendered.images:
        seed = image.seed if image.seed is not None else parameters.seed
        made = overlay.composite_png(image.png) if overlay else image.png
        png = with_text_chunks(
            made, _text_chunks(params, parameters, rendered, image.index, seed, (width, height))
        )
        delivered: dict[str, str] = {"file_name": image.file_name}
        if params.output == "path":
            assert params.output_dir is not None
            path = _write_or_roll_back(Path(params.output_dir), image.file_name, png, written)
            delivered = {"file_name": path.name, "path": str(path)}
        else:
            delivered["base64"] = to_base64(png)
        generated = GeneratedImage(
            width=width,
            height=height,
            seed=seed,
            index=image.index,
            **delivered,
        )
        images.append(generated)
    aspect = ratio_of(width, height)
    return GenerateResult(
        model_id=rendered.model_id,
        images=images,
        metadata=GenerationMetadata(
            **{
                **parameters.sampling.model_dump(by_alias=False),
                "compute_units": rendered.compute_units,
            },
            device=rendered.device,
            dtype=rendered.dtype,
            dtype_reason=rendered.dtype_reason,
            model=parameters.model.id if parameters.model else "",
            family=parameters.model.family if parameters.model else None,
            seed=parameters.seed,
            quality_preset=parameters.quality,
            strength=parameters.strength,
            reference_sha256=parameters.reference.sha256 if parameters.reference else None,
            **(edit.to_record_fields() if edit else {}),
            controls=[control.to_record() for control in parameters.controls],
            loras=[lora.to_record() for lora in parameters.loras],
            clip_skip=parameters.clip_skip,
            used_reference_image=parameters.reference is not None,
            sources=_sources(parameters, rendered),
            backend=rendered.backend,
            sample_binary=rendered.sample_binary,
            resource_path=rendered.resource_path,
            requested_aspect_ratio=parameters.requested_aspect_ratio,
            width=width,
            height=height,
            resource_path_source=parameters.resource_path_source,
            manifest_path=str(parameters.manifest_path) if parameters.manifest_path else None,
            actual_aspect_ratio=aspect,
            duration_ms=rendered.duration_ms,
            total_ms=round((time.monotonic() - started) * 1000),
        ),
        warnings=_request_warnings(params)
        + _prompt_warnings(parameters)
        + _unused_controls(params, rendered)
        + rendered.warnings,
    )


def _sources(parameters: JobParameters, rendered: Rendered) -> dict[str, ParameterSource]:
    """Where each value came from, for the values the backend used."""
    sources = dict(parameters.sources)
    if rendered.compute_units is None:
        sources.pop("computeUnits", None)
    return sources


def _ran_on(rendered: Rendered) -> dict[str, str]:
    """What the backend ran on, as it says: Core ML's compute units, or a device and dtype."""
    if rendered.compute_units is not None:
        return {"computeUnits": rendered.compute_units}
    return {"device": rendered.device or "", "dtype": rendered.dtype or ""}


def _unused_controls(params: GenerateParams, rendered: Rendered) -> list[str]:
    if params.compute_units is not None and rendered.compute_units is None:
        return [
            f"computeUnits is Core ML's setting; this backend ran on {rendered.device} "
            f"({rendered.dtype}) and did not use it."
        ]
    return []


def _prompt_warnings(parameters: JobParameters) -> list[str]:
    if not parameters.prompt_syntax_removed:
        return []
    label = parameters.model.label if parameters.model else "the model"
    return [
        f"{label} cannot weigh words, so the prompt weights ((word:1.2), (word), [word]) "
        f"were removed and it was given the words alone: {parameters.prompt!r}"
        + (f", negative {parameters.negative_prompt!r}" if parameters.negative_prompt else "")
        + ". Prompt weights work with the diffusers backend's models "
        "(models[].promptWeights)."
    ]


def _request_warnings(params: GenerateParams) -> list[str]:
    count = len(params.input_images)
    if count > 1:  # the words of Studio's own provider, which hosts may look for
        return [
            f"Received {count} reference images. Local backend currently uses only the first image."
        ]
    given = [
        name
        for name, value in (
            ("strength", params.strength),
            ("referenceInfluence", params.chosen_influence),
        )
        if value is not None
    ]
    if not count and given:
        return [
            f"{' and '.join(given)} apply only to a reference image (inputImages), and there "
            "is none: they were ignored, and the image was made from the prompt alone."
        ]
    return []


def _write_or_roll_back(directory: Path, name: str, png: bytes, written: list[Path]) -> Path:
    """Write one image of a request; if it fails, remove the files already written (its
    previews and images), so the host finds all of a request's images or none, and answer
    -32008 naming the file it tried."""
    try:
        path = write_without_clobbering(directory, safe_file_name(name), png)
    except OSError as exc:
        for earlier in written:
            earlier.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        tried = exc.filename or directory / safe_file_name(name)
        raise OutputNotWritten(
            f"The images were made but {tried} could not be written: {reason}. Check the "
            "directory (free space, that it still exists) and generate again.",
            OutputNotWrittenData(path=str(tried), reason=reason),
        ) from exc
    written.append(path)
    return path


def _ran_on_text(rendered: Rendered) -> str:
    if rendered.compute_units is not None:
        return f"Compute units: {rendered.compute_units}"
    return f"Device: {rendered.device} ({rendered.dtype})"


def _text_chunks(
    params: GenerateParams,
    parameters: JobParameters,
    rendered: Rendered,
    index: int,
    seed: int,
    size: tuple[int, int],
) -> list[tuple[str, str]]:
    """A `parameters` chunk in AUTOMATIC1111's layout, and the exact request as JSON."""
    sampling = parameters.sampling
    lines = [parameters.prompt]
    if parameters.negative_prompt:
        lines.append(f"Negative prompt: {parameters.negative_prompt}")
    lines.append(
        f"Steps: {sampling.step_count}, Sampler: {A1111_SAMPLER_NAMES[sampling.scheduler]}, "
        f"CFG scale: {sampling.guidance_scale:g}, Seed: {seed}, "
        f"Size: {size[0]}x{size[1]}, Model: {rendered.model_id}, "
        f"{_ran_on_text(rendered)}, Batch size: {parameters.count}, "
        f"Batch pos: {index}, "
        + (f"Clip skip: {parameters.clip_skip}, " if (parameters.clip_skip or 1) > 1 else "")
        + f"Version: studio-imagegen-worker {__version__}"
    )
    effective = parameters.to_record()
    if rendered.compute_units is None:
        effective.pop("computeUnits", None)
    effective |= _ran_on(rendered)
    effective["sources"] = _sources(parameters, rendered)
    if parameters.model is not None:
        effective |= {"model": parameters.model.id, "family": parameters.model.family}
    record = {
        "request": params.to_wire(),
        "effective": effective,
        "modelId": rendered.model_id,
        "backend": rendered.backend,
        "index": index,
    }
    return [
        (PARAMETERS_KEYWORD, "\n".join(lines)),
        (JSON_KEYWORD, json.dumps(record, ensure_ascii=False, sort_keys=True)),
    ]
