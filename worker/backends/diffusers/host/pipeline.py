"""The model host's torch side: load a pipeline of a family it runs (SD 1.x/2.x, SDXL,
SD3) once, render jobs with it.

Runs only in the host process. Every image of a job has its own CPU generator seeded
`seed + i`, so any image of a batch can be made again alone, with the same bytes on the
same machine and torch version; the CPU generator keeps that true on cuda and mps too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.backends.diffusers.host import messages
from worker.backends.diffusers.host.batches import (
    batch_size,
    batches_work,
    free_memory,
    out_of_memory,
)
from worker.backends.diffusers.host.families import (
    FAMILIES,
    IMAGE_TO_IMAGE,
    INPAINTING,
    TEXT_TO_IMAGE,
    Identified,
    checkpoint_family,
    directory_family,
)
from worker.backends.diffusers.host.loras import Adapters
from worker.backends.diffusers.host.messages import HostControl, HostJob, image_seed
from worker.backends.diffusers.host.precision import channels_last, choose_precision
from worker.backends.diffusers.host.previews import preview_message
from worker.backends.diffusers.host.prompts import prompt_arguments
from worker.backends.diffusers.variables import ENV_DEVICE, ENV_DTYPE, ENV_MODEL, INSTALL_MODEL

logger = logging.getLogger(__name__)

Emit = Callable[[messages.Message], None]
SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "dpmpp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a_trailing": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "lcm": ("LCMScheduler", {}),
}
"""The protocol's scheduler names and the diffusers schedulers they stand for, built from
the model's own scheduler configuration (SD3 runs its own flow-matching scheduler,
`flow_match`, whatever its configuration holds). PNDM skips its Runge-Kutta warm-up, as
every Stable Diffusion release ships it: built from SDXL's Euler configuration it would
otherwise run the warm-up, which fails below a few steps."""


class LoadError(Exception):
    """The model cannot be loaded as configured: why, and what to do about it."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


class Stopped(Exception):
    """Raised from the step callback: the job was cancelled (or the worker went away)."""


@dataclass
class LoadedModel:
    text_to_image: Any
    image_to_image: Any
    inpainting: Any
    device: str
    dtype: str
    load_ms: int
    safety_checker: bool
    schedulers: dict[str, Any]
    dtype_reason: str = ""
    family: str = "sd1"
    controlnets: dict[str, Any] = field(default_factory=dict)
    """The ControlNets of the last job that had controls, by path: kept while jobs ask
    for them, so each loads once."""
    control_pipes: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)
    """That job's ControlNet pipeline, by its mode and ControlNets."""
    adapters: Adapters = field(default_factory=Adapters)
    """The LoRAs loaded into it, switched per job."""
    tiny_autoencoder: tuple[str, Any] | None = None
    """The TAESD of the last job that asked for `taesd` previews, by its path."""


def choose_device(torch: Any, name: str) -> str:
    """The device to run on: `auto` picks cuda, then mps, then cpu."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name.startswith("cuda") and not cuda:
        built = "without CUDA" if torch.version.cuda is None else f"for CUDA {torch.version.cuda}"
        raise LoadError(
            f"{ENV_DEVICE}={name} but CUDA is not available (torch {torch.__version__}, built "
            f"{built}, sees no GPU)",
            f"set {ENV_DEVICE}=auto or cpu, or install a CUDA build of torch on a machine "
            "with an NVIDIA GPU",
        )
    if name.startswith("cuda") and ":" in name:
        index = int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise LoadError(
                f"{ENV_DEVICE}={name} but this machine has {torch.cuda.device_count()} CUDA "
                "device(s)",
                f"set {ENV_DEVICE}=cuda (the first GPU) or name one that exists",
            )
    if name == "mps" and not mps:
        raise LoadError(
            f"{ENV_DEVICE}=mps but Apple's Metal backend is not available here",
            f"set {ENV_DEVICE}=auto or cpu (mps needs a Mac with Apple silicon)",
        )
    return name


def load(
    model: Path,
    device_name: str,
    dtype_name: str,
    safety: bool,
    say: Callable[[str], None] = logger.info,
    label: str = "the model",
    family: str | None = None,
    refiner: bool = False,
) -> LoadedModel:
    """Load the pipeline at `model` (a diffusers directory or a single-file checkpoint) as
    its `family` (read from its files where not given), saying what it is doing as it
    goes. That it is a pipeline of a family this host runs was checked by whoever started
    it (the backend's `checks.locate_model`)."""
    started = time.monotonic()
    say("Importing torch and diffusers")
    import diffusers
    import torch

    identified = Identified(family, refiner) if family is not None else _identify(model)
    kind = FAMILIES[identified.family]
    device = choose_device(torch, device_name)
    precision, precision_reason = choose_precision(dtype_name, device, ENV_DTYPE)
    dtype = getattr(torch, precision)
    say(f"Loading {label} ({kind.title}) on {device} ({str(dtype).removeprefix('torch.')})")
    options: dict[str, Any] = {"torch_dtype": dtype}
    if kind.safety_checker and not safety:
        options |= {"safety_checker": None, "requires_safety_checker": False}
    if kind.name == "sdxl":
        options["add_watermarker"] = False  # needs the invisible-watermark package
    if kind.name == "sd3" and not (model / "text_encoder_3").is_dir() and model.is_dir():
        options |= {"text_encoder_3": None, "tokenizer_3": None}  # T5 is optional
    first = kind.image_to_image if identified.refiner else kind.text_to_image
    pipeline_class = getattr(diffusers, first)
    if model.is_file():
        options["config"] = str(single_file_config(model, identified))
    try:
        if model.is_file():
            pipe = pipeline_class.from_single_file(str(model), local_files_only=True, **options)
        else:
            pipe = pipeline_class.from_pretrained(str(model), local_files_only=True, **options)
        pipe = pipe.to(device)
    except Exception as exc:  # a library's reason, whichever it is, is the reason
        raise LoadError(
            f"{model} could not be loaded as a {kind.title} pipeline "
            f"({type(exc).__name__}: {_first_line(exc)})",
            f"point {ENV_MODEL} at a complete diffusers directory or .safetensors "
            f"checkpoint, or run: {INSTALL_MODEL}",
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    if channels_last(device, precision):
        precision_reason += ", in channels-last memory layout"
        for part in (pipe.unet, pipe.vae) if hasattr(pipe, "unet") else (pipe.vae,):
            part.to(memory_format=torch.channels_last)
    say(f"Reading the weights of {label}")
    read_weights(pipe)
    image_to_image = getattr(diffusers, kind.image_to_image)(**pipe.components)
    image_to_image.set_progress_bar_config(disable=True)
    inpainting = None
    if kind.inpainting:  # the worker refuses a mask for a family without one
        inpainting = getattr(diffusers, kind.inpainting)(**pipe.components)
        inpainting.set_progress_bar_config(disable=True)
    if kind.name == "sd3":
        schedulers = {"flow_match": pipe.scheduler}
    else:
        base_config = pipe.scheduler.config
        schedulers = {
            name: getattr(diffusers, class_name).from_config(base_config, **extra)
            for name, (class_name, extra) in SCHEDULER_CLASSES.items()
        }
    return LoadedModel(
        text_to_image=None if identified.refiner else pipe,
        image_to_image=image_to_image,
        inpainting=inpainting,
        device=device,
        dtype=precision,
        dtype_reason=precision_reason,
        load_ms=round((time.monotonic() - started) * 1000),
        safety_checker=getattr(pipe, "safety_checker", None) is not None,
        schedulers=schedulers,
        family=kind.name,
    )


def read_weights(pipe: Any) -> None:
    """Touch every weight of the pipeline, so that the load ends when they are in memory:
    safetensors are memory-mapped, and what is not read now would be read by the first
    step, which would then take several times as long as the next."""
    import torch

    with torch.no_grad():
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in [*component.parameters(), *component.buffers()]:
                    if tensor.numel():
                        tensor.reshape(-1)[:: max(1, 4096 // tensor.element_size())].sum()


def _identify(model: Path) -> Identified:
    """The family of a model the worker did not name one for (read as the worker does)."""
    import json

    if model.is_file():
        return checkpoint_family(model) or Identified("sd1")
    try:
        declared = json.loads((model / "model_index.json").read_text("utf-8"))
    except (OSError, ValueError):
        declared = {}
    return directory_family(model, declared) or Identified("sd1")


CONFIG_PATTERNS = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model"]
"""A pipeline's configuration without its weights: what a single-file checkpoint needs."""


def single_file_config(model: Path, identified: Identified) -> Path:
    """The local diffusers configuration a single-file checkpoint is built with: that of
    its family (as the worker told it from the checkpoint's keys), from the Hugging Face
    cache, since nothing is downloaded while generating. LoadError naming the family and
    the command that fetches it when it is not there."""
    kind = FAMILIES[identified.family]
    repo = identified.config_repo
    config = _cached_config(repo)
    if config is None:
        raise LoadError(
            f"{model.name} is a single-file {kind.title} checkpoint, which diffusers builds "
            f"with the configuration of {repo} (its json and tokenizer files, a few MB); "
            "that is not in the Hugging Face cache, and the worker never downloads while "
            "generating",
            f"fetch it once: {INSTALL_MODEL} --model {repo} --config-only",
        )
    return config


def _cached_config(repo: str) -> Path | None:
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=CONFIG_PATTERNS))
    except Exception:  # not cached at its main branch; a pinned revision may be
        pass
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots"
    found = [s for s in sorted(snapshots.glob("*")) if (s / "model_index.json").is_file()]
    return found[0] if found else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def timestep_total(pipe: Any, scheduler: Any, job: HostJob) -> int:
    """The steps the pipeline will run for one image: the scheduler's own timestep list
    (PNDM has one more than asked), cut as the image-to-image pipeline itself cuts it by
    the strength (each family rounds its own way)."""
    steps = job.sampling.step_count
    scheduler.set_timesteps(steps)
    if job.strength is None:
        return len(scheduler.timesteps)
    timesteps, _ = pipe.get_timesteps(steps, job.strength, "cpu")
    return len(timesteps)


def render(model: LoadedModel, job: HostJob, stop: threading.Event, emit: Emit) -> None:
    """Render the job's images into its output directory, reporting each step; raises
    `Stopped` at the first step boundary after `stop` is set."""
    import torch
    from PIL import Image

    reference = mask = None
    if job.reference_path is not None:
        with Image.open(job.reference_path) as opened:
            reference = opened.convert("RGB")
    if job.mask_path is not None:
        with Image.open(job.mask_path) as opened:
            mask = opened.convert("L")
    controls = []
    for control in job.controlnets:
        with Image.open(control.image_path) as opened:
            controls.append(opened.convert("RGB"))
    sampling = job.sampling
    mode = TEXT_TO_IMAGE if reference is None else IMAGE_TO_IMAGE if mask is None else INPAINTING
    pipe = _pipeline(model, mode, job.controlnets)
    model.adapters.apply(model.image_to_image, job.loras)
    scheduler = model.schedulers[sampling.scheduler]
    pipe.scheduler = scheduler
    if sampling.reduce_memory:
        pipe.enable_attention_slicing()
    else:
        pipe.disable_attention_slicing()
    per_image = timestep_total(pipe, scheduler, job)
    size = batch_size(
        job.count,
        (job.width, job.height),
        model.dtype,
        sampling.reduce_memory or not batches_work(model.family, mode),
        free_memory(torch, model.device),
    )
    pending = [list(range(i, min(i + size, job.count))) for i in range(0, job.count, size)]
    counter = StepCounter(total=per_image * len(pending))
    emit(messages.Accepted(total_steps=counter.total))
    arguments: dict[str, Any] = {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt or None,
        "num_inference_steps": sampling.step_count,
        "guidance_scale": sampling.guidance_scale,
        "output_type": "pil",
    }
    if reference is None or mask is not None:
        arguments |= {"width": job.width, "height": job.height}
    if reference is not None:
        arguments |= {"image": reference, "strength": job.strength}
    if mask is not None:
        arguments["mask_image"] = mask
    if controls:
        arguments |= _control_arguments(job.controlnets, controls, mode)
    embeddings = prompt_arguments(
        pipe, model.family, job.prompt, job.negative_prompt, job.clip_skip
    )
    if embeddings is not None:  # weighted words, or an earlier layer of the text encoder
        del arguments["prompt"], arguments["negative_prompt"]
        arguments |= embeddings
    while pending:
        batch = pending.pop(0)
        on_step = _step_callback(
            model, job, (batch, per_image), counter, stop, emit, _tiny_autoencoder(model, job)
        )
        try:
            result = pipe(
                **arguments,
                num_images_per_prompt=len(batch),
                generator=[
                    torch.Generator("cpu").manual_seed(image_seed(job.seed, i)) for i in batch
                ],
                callback_on_step_end=on_step,
            )
        except Exception as exc:
            if len(batch) == 1 or not out_of_memory(exc):
                raise
            logger.warning("%d images at once ran out of memory; one at a time", len(batch))
            pending = [[i] for i in [*batch, *(i for rest in pending for i in rest)]]
            counter.total = counter.done + per_image * len(pending)  # goes on, never back
            continue
        _deliver(result, batch, job, emit)


@dataclass
class StepCounter:
    """A job's steps so far, and how many it will take (more, if a batch is split)."""

    total: int
    done: int = 0


def _deliver(result: Any, batch: list[int], job: HostJob, emit: Emit) -> None:
    """Save a call's images, each under its index, and say so (or that the safety
    checker withheld it)."""
    verdicts = getattr(result, "nsfw_content_detected", None)  # SD 1.x/2.x only
    for position, index in enumerate(batch):
        flagged = bool(verdicts and verdicts[position])
        path = Path(job.output_dir) / f"image.{index}.png"
        if not flagged:
            result.images[position].save(path, format="PNG")
        emit(
            messages.Image(
                index=index, seed=image_seed(job.seed, index), path=str(path), withheld=flagged
            )
        )


def _pipeline(model: LoadedModel, mode: int, controls: list[HostControl]) -> Any:
    """The pipeline a job of `mode` runs: the loaded one, or with controls the family's
    ControlNet pipeline of that mode, built from the loaded components (nothing of the
    model is loaded again) and its ControlNets, each loaded once while jobs keep them."""
    if not controls:
        return (model.text_to_image, model.image_to_image, model.inpainting)[mode]
    key = (mode, tuple(control.path for control in controls))
    pipe = model.control_pipes.get(key)
    if pipe is not None:
        return pipe
    import diffusers
    import torch

    base = model.image_to_image  # every model that takes controls has one
    held = {path: net for path, net in model.controlnets.items() if path in key[1]}
    for path in key[1]:
        if path not in held:
            held[path] = diffusers.ControlNetModel.from_pretrained(
                path, torch_dtype=getattr(torch, model.dtype), local_files_only=True
            ).to(model.device)
    model.controlnets = held  # the ControlNets of another job are let go
    nets = [held[path] for path in key[1]]
    class_name = FAMILIES[model.family].controlnet[mode]
    pipe = getattr(diffusers, class_name)(
        **base.components, controlnet=nets[0] if len(nets) == 1 else nets
    )
    pipe.set_progress_bar_config(disable=True)
    model.control_pipes = {key: pipe}
    return pipe


def _tiny_autoencoder(model: LoadedModel, job: HostJob) -> Any:
    """The TAESD a job's previews decode with (loaded once while jobs ask for it), or
    None."""
    path = job.tiny_autoencoder_path
    if job.preview_decoder != "taesd" or path is None or not job.preview_every:
        return None
    if model.tiny_autoencoder is None or model.tiny_autoencoder[0] != path:
        import diffusers
        import torch

        tiny = diffusers.AutoencoderTiny.from_pretrained(
            path, torch_dtype=getattr(torch, model.dtype), local_files_only=True
        ).to(model.device)
        model.tiny_autoencoder = (path, tiny)
    return model.tiny_autoencoder[1]


def _control_arguments(controls: list[HostControl], images: list[Any], mode: int) -> dict[str, Any]:
    """What a ControlNet pipeline takes of the controls: one value each, or a list each
    in the order of its ControlNets."""

    def each(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else values

    return {
        "image" if mode == TEXT_TO_IMAGE else "control_image": each(images),
        "controlnet_conditioning_scale": each([c.weight for c in controls]),
        "control_guidance_start": each([c.start for c in controls]),
        "control_guidance_end": each([c.end for c in controls]),
    }


def _step_callback(
    model: LoadedModel,
    job: HostJob,
    call: tuple[list[int], int],
    counter: StepCounter,
    stop: threading.Event,
    emit: Emit,
    tiny_autoencoder: Any = None,
) -> Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]:
    """What the pipeline calls after each step of a call making the images `call` =
    (their indexes, the steps each takes): stop if asked (at this boundary, before any
    decode), report the step, and send a preview of each image when one is due: every
    `preview_every` steps, but not after the first (noise still) nor after the last (the
    final image, decoded next)."""
    batch, per_image = call
    family = FAMILIES[model.family]

    def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if stop.is_set():
            raise Stopped
        counter.done += 1
        emit(messages.Step(step=counter.done, total_steps=counter.total, index=batch[0]))
        taken = step + 1
        if job.preview_every and taken % job.preview_every == 0 and 1 < taken < per_image:
            latents = tensors["latents"]
            for position, index in enumerate(batch):
                where = (index, counter.done, counter.total)
                one = latents[position : position + 1]
                emit(preview_message(pipe, family, one, job, where, tiny_autoencoder))
        return tensors

    return on_step
