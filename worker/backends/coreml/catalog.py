"""The Core ML models on this machine: the configured one (the resource path, with the
bundles the model manifest adds for other ratios), and every other bundle in the models
folder (`SYSTEMSCULPT_LOCAL_DIFFUSION_MODELS_DIR`), each folder holding a denoiser being
one model. Read from the files only, and cached by their modification times."""

from __future__ import annotations

from pathlib import Path

from protocol.models import COMPUTE_UNITS, FAMILY_NAMES, Scheduler
from worker.backends.coreml.bundle_files import (
    BundleFiles,
    bundles_below,
    read_bundle,
)
from worker.backends.coreml.bundles import FIXED_SIZES, OTHER_SIZES, load_manifest
from worker.backends.coreml.checks import (
    MODEL_ID_PREFIX,
    SamplerInstallation,
    check_image_encoder,
    locate_installation,
)
from worker.backends.coreml.settings import BACKEND_ID, SCHEDULERS, CoreMLSettings
from worker.controls import ControlNet
from worker.host import HostPlatform
from worker.models import Model
from worker.sizes import SizeOption, SizeTable, ratio_of

SD3_SCHEDULERS: tuple[Scheduler, ...] = ("flow_match",)
"""The sampler runs SD3 with its discrete flow scheduler whatever `--scheduler` says."""
SCHEDULER_NOTE = (
    f"StableDiffusionSample has {' and '.join(SCHEDULERS)} only. Choose one of them, or use "
    "the diffusers backend, which has it"
)
SD3_SCHEDULER_NOTE = (
    "SD3 bundles always run their discrete flow scheduler (the sampler ignores --scheduler "
    "for them). Leave scheduler out, or ask for flow_match"
)
ATTENTION_NOTES = {
    "split_einsum": "split-einsum attention: made for the Neural Engine (cpuAndNeuralEngine)",
    "original": "original attention: runs best on the GPU (cpuAndGPU)",
}


def find_models(settings: CoreMLSettings, host: HostPlatform) -> list[Model]:
    """The configured model first (the default when Core ML is the backend), then the
    other bundles of the models folder, by name."""
    installation = locate_installation(settings, host)
    sizes = load_manifest(settings)
    configured = {settings.resource_path.resolve(strict=False)} | {
        option.resource_path.resolve(strict=False) for option in sizes.options.values()
    }
    models = [_configured_model(settings, installation, sizes)]
    labels = {models[0].label}
    for folder in bundles_below(settings.models_dir):
        if folder.resolve() in configured:
            continue
        label = _label(settings.models_dir, folder, labels)
        labels.add(label)
        models.append(_bundle_model(settings, installation.with_resources(host, folder), label))
    return models


def _configured_model(
    settings: CoreMLSettings, installation: SamplerInstallation, sizes: SizeTable
) -> Model:
    bundle = read_bundle(settings.resource_path) if settings.resource_path.is_dir() else None
    label = settings.resource_path.name or "default"
    encoder = check_image_encoder(settings.resource_path)
    return _model(
        bundle,
        label,
        settings.resource_path,
        sizes,
        problem="" if installation.available else installation.reason,
        fix=installation.install_hint,
        image_to_image_problem=""
        if encoder.status == "ok"
        else f"{encoder.detail} To fix: {encoder.fix_text}.",
        result_id=MODEL_ID_PREFIX,
    )


def _bundle_model(settings: CoreMLSettings, installation: SamplerInstallation, label: str) -> Model:
    folder = installation.resource_path
    bundle = read_bundle(folder)
    if bundle.size is not None:
        width, height = bundle.size
        option = SizeOption(ratio_of(width, height), width, height, folder, "models folder", True)
        sizes = SizeTable(
            {option.ratio: option},
            fixed_sizes_reason=FIXED_SIZES,
            fixed_sizes_alternative=OTHER_SIZES,
        )
    else:
        sizes = SizeTable({}, fixed_sizes_reason=FIXED_SIZES)
    problem = "" if installation.available else installation.reason
    fix = installation.install_hint if problem else ""
    if bundle.missing:  # a bundle of the folder, not the one install fetches
        kind = FAMILY_NAMES[bundle.family] if bundle.family else "Core ML"
        problem = f"{folder} is an incomplete {kind} bundle: {', '.join(bundle.missing)} missing"
        fix = f"unzip its download again into {settings.models_dir}, or remove {folder}"
    elif not problem and bundle.size is None:
        problem = (
            f"{folder} does not say which size it makes (its VAEDecoder.mlmodelc has no "
            "metadata.json)"
        )
        fix = f"convert or download the bundle again, or remove {folder}"
    encoder = check_image_encoder(folder)
    return _model(
        bundle,
        label,
        folder,
        sizes,
        problem=problem,
        fix=fix,
        image_to_image_problem=""
        if encoder.status == "ok"
        else f"{encoder.detail} To fix: {encoder.fix_text}.",
        result_id=f"local/macos-coreml-{label}",
    )


def _model(
    bundle: BundleFiles | None,
    label: str,
    path: Path,
    sizes: SizeTable,
    *,
    problem: str,
    fix: str,
    image_to_image_problem: str,
    result_id: str,
) -> Model:
    family = bundle.family if bundle else None
    pipeline = bundle.pipeline if bundle else "sd"
    square = sizes.options.get("1:1") or next(iter(sizes.options.values()), None)
    native = (square.width, square.height) if square else (512, 512)
    notes = []
    guidance_min, guidance_note = 0.0, ""
    if pipeline != "sd":
        guidance_min = 1.0  # its pipeline always runs guidance: below 1 is unconditioned
        guidance_note = "its pipeline always runs guidance, so below 1 the image ignores the prompt"
        notes.append(f"{FAMILY_NAMES[family] if family else 'it'} always runs guidance (1 or more)")
    elif bundle is not None and bundle.unet_batch == 2:
        guidance_min = 1.0  # a UNet of batch 2 fails without guidance's second half
        guidance_note = (
            "its UNet was converted to run with guidance (batch 2), and Core ML fails without it"
        )
        notes.append("its UNet was converted for guidance: guidance below 1 would fail")
    if bundle is not None and bundle.refiner:
        notes.append("a refiner: it makes images only from a reference (inputImages)")
    if bundle is not None and bundle.attention is not None:
        notes.append(ATTENTION_NOTES[bundle.attention])
    if bundle is not None and not controls_problem(bundle):
        notes.append(
            "ControlNet: the sampler sums its ControlNets at full weight over the whole run "
            "(no weight, start or end), and needs guidance of 1 or more"
        )
    return Model(
        id=f"{BACKEND_ID}/{label}",
        label=label,
        backend=BACKEND_ID,
        family=family,
        path=path,
        sizes=sizes,
        schedulers=SD3_SCHEDULERS if pipeline == "sd3" else SCHEDULERS,
        native=native,
        variant="refiner" if bundle is not None and bundle.refiner else "base",
        guidance_min=guidance_min,
        guidance_note=guidance_note,
        scheduler_note=SD3_SCHEDULER_NOTE if pipeline == "sd3" else SCHEDULER_NOTE,
        image_to_image_problem=image_to_image_problem,
        inpainting="controlnet" if inpaint_controlnet(bundle) else "none",
        preview_note="the sampler decodes every preview with its VAE and writes it as a "
        "PNG, about as long as a denoising step or more: every 5 steps is gentle",
        inpainting_problem=inpainting_problem(bundle),
        controlnets=bundle.controlnets if bundle is not None else (),
        controls_problem=controls_problem(bundle),
        loras_problem=LORA_PROBLEM,
        compute_units=COMPUTE_UNITS,
        attention=bundle.attention if bundle else None,
        preferred_compute_units="cpuAndGPU"
        if bundle is not None and bundle.attention == "original"
        else None,
        problem=problem,
        fix=fix,
        notes=tuple(notes),
        result_id=result_id,
        details=bundle,
    )


LORA_PROBLEM = (
    "a Core ML bundle is compiled with its weights, so a LoRA cannot be applied at run "
    "time; merge the LoRA into the model before converting it (a bundle made from the "
    "merged model is listed as an ordinary model), or use the diffusers backend"
)
CONTROLNET_SOURCE = (
    "coreml-community/ControlNet-Models-For-Core-ML on Hugging Face: CN/<Kind>.zip, or "
    "<Kind>-SE.zip for a split-einsum bundle"
)
CONTROLLED_UNET_FIX = (
    "convert the model again with --unet-support-controlnet (Apple's torch2coreml), or use "
    "a bundle that has one"
)
NOT_SD = (
    "the sampler runs ControlNet with Stable Diffusion 1.x/2.x bundles only (with --xl or "
    "--sd3 it throws that ControlNet is not supported)"
)


def controls_problem(bundle: BundleFiles | None) -> str:
    """Why this bundle can use no ControlNet, and the fix; "" when it can."""
    if bundle is not None and bundle.pipeline != "sd":
        return f"{NOT_SD}; use the diffusers backend for ControlNet with this family"
    if bundle is None or not bundle.controlnets:
        return (
            "the bundle has no ControlNet: put compiled ControlNet models (from "
            f"{CONTROLNET_SOURCE}) in its controlnet/ folder, beside a ControlledUnet.mlmodelc"
        )
    if not bundle.has_controlled_unet:
        return (
            "the bundle lacks ControlledUnet.mlmodelc, the UNet the sampler runs with "
            f"ControlNets: {CONTROLLED_UNET_FIX}"
        )
    return ""


def inpaint_controlnet(bundle: BundleFiles | None) -> ControlNet | None:
    """The ControlNet inpaint model the bundle repaints masked regions with, if any."""
    if bundle is None or controls_problem(bundle):
        return None
    return next((net for net in bundle.controlnets if net.inpaint), None)


def inpainting_problem(bundle: BundleFiles | None) -> str:
    """Why this bundle cannot repaint a masked region, and the fix. The sampler has no
    mask mode (its pipeline's inpainting case is commented out); the one route is a
    ControlNet inpaint model beside a controlled UNet, of SD 1.x/2.x only."""
    if inpaint_controlnet(bundle) is not None:
        return ""
    if bundle is not None and bundle.pipeline != "sd":
        return (
            f"Core ML's sampler has no mask mode, and {NOT_SD}; use the diffusers backend "
            "for masked editing with this family"
        )
    if bundle is not None and any(net.inpaint for net in bundle.controlnets):
        return (
            "Core ML's sampler has no mask mode; the bundle's ControlNet inpaint model needs "
            f"ControlledUnet.mlmodelc, which it lacks: {CONTROLLED_UNET_FIX}"
        )
    return (
        "Core ML's sampler has no mask mode; the one route is a ControlNet inpaint model, "
        f"which this bundle lacks: put one (from {CONTROLNET_SOURCE.replace('<Kind>', 'InPaint')}) "
        "in its controlnet/ folder beside a ControlledUnet.mlmodelc, or use the diffusers "
        "backend"
    )


def _label(root: Path, folder: Path, taken: set[str]) -> str:
    """The bundle's name: its first folder below the models folder (a zip unpacks as
    `<name>/<name>/` or `<name>/compiled/`), made unique."""
    parts = folder.relative_to(root).parts
    label = parts[0]
    if label in taken:
        label = "-".join(parts)
    return label
