"""The model families the diffusers backend runs, and how to tell a model's family from
its files without loading it: the pipelines' class names, the configuration a single-file
checkpoint of the family is built with, the schedulers it takes.

Torch-free and worker-free: the worker reads it to list models, the model host to load
them. A single-file checkpoint's family comes from the tensor names in its safetensors
header, as diffusers' `infer_diffusers_model_type` tells them apart.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from protocol.models import SCHEDULERS, Scheduler

SD_SCHEDULERS: tuple[Scheduler, ...] = tuple(name for name in SCHEDULERS if name != "flow_match")
"""What Stable Diffusion 1.x, 2.x and XL take: every scheduler but SD3's own."""


SD_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
"""SD 1.x/2.x's latent-to-RGB factors, as ComfyUI and its peers preview with them."""
SDXL_LATENT_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINTING = 0, 1, 2
"""A job's mode: the index of its pipeline in a family's `controlnet` classes."""
SD_CONTROLNET = (
    "StableDiffusionControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline",
)
CONTROLNET_CLASS = "ControlNetModel"
"""A saved ControlNet's `_class_name` (SD 1.x/2.x and SDXL alike)."""


@dataclass(frozen=True)
class Family:
    name: str
    """As the protocol names it: sd1, sd2, sdxl, sd3."""
    title: str
    text_to_image: str
    image_to_image: str
    inpainting: str
    """The diffusers pipeline classes (`inpainting` empty: masked editing not offered)."""
    config_repo: str
    """The hub repository whose configuration builds a single-file checkpoint of it."""
    native_side: int
    schedulers: tuple[Scheduler, ...]
    """The first is its own when a request names none it takes."""
    safety_checker: bool = False
    """Its pipelines take a safety checker."""
    controlnet: tuple[str, str, str] = ("", "", "")
    """Its ControlNet pipelines: text-to-image, image-to-image, inpainting (empty: not
    offered)."""
    text_width: int = 768
    """Its UNet's cross-attention width: a ControlNet of the same width is one of its own."""
    controlnet_example: str = ""
    """A published ControlNet of the family, for the fix where none is installed."""
    latent_rgb: tuple[tuple[float, float, float], ...] = ()
    """Its latent-to-RGB factors (a row per latent channel: R, G, B), for previews
    without the VAE; empty: previews decode with the VAE."""
    latent_rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


FAMILIES = {
    "sd1": Family(
        "sd1",
        "Stable Diffusion 1.x",
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        512,
        SD_SCHEDULERS,
        safety_checker=True,
        controlnet=SD_CONTROLNET,
        controlnet_example="lllyasviel/control_v11p_sd15_canny",
        latent_rgb=SD_LATENT_RGB,
    ),
    "sd2": Family(
        "sd2",
        "Stable Diffusion 2.x",
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
        "stabilityai/stable-diffusion-2-1",
        768,
        SD_SCHEDULERS,
        safety_checker=True,
        controlnet=SD_CONTROLNET,
        text_width=1024,
        controlnet_example="thibaud/controlnet-sd21-canny-diffusers",
        latent_rgb=SD_LATENT_RGB,
    ),
    "sdxl": Family(
        "sdxl",
        "Stable Diffusion XL",
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
        "stabilityai/stable-diffusion-xl-base-1.0",
        1024,
        SD_SCHEDULERS,
        controlnet=(
            "StableDiffusionXLControlNetPipeline",
            "StableDiffusionXLControlNetImg2ImgPipeline",
            "StableDiffusionXLControlNetInpaintPipeline",
        ),
        text_width=2048,
        controlnet_example="diffusers/controlnet-canny-sdxl-1.0",
        latent_rgb=SDXL_LATENT_RGB,
        latent_rgb_bias=(0.1084, -0.0175, -0.0011),
    ),
    "sd3": Family(
        "sd3",
        "Stable Diffusion 3",
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        "",  # StableDiffusion3InpaintPipeline exists; not offered until it is tested here
        "stabilityai/stable-diffusion-3-medium-diffusers",
        1024,
        ("flow_match",),
    ),
}
REFINER_CONFIG = "stabilityai/stable-diffusion-xl-refiner-1.0"
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd1",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusionInpaintPipeline": "sd1",
    "StableDiffusionXLInpaintPipeline": "sdxl",
}
"""A saved pipeline's `_class_name` and its family (SD 2.x is told by its text encoder)."""
REFINER_CLASSES = frozenset({"StableDiffusionXLImg2ImgPipeline"})
INPAINTING_CLASSES = frozenset(
    {"StableDiffusionInpaintPipeline", "StableDiffusionXLInpaintPipeline"}
)
INPAINTING_UNET_CHANNELS = 9
"""An inpainting checkpoint's UNet takes the latents, the mask and the masked image."""

_SD3_KEY = "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"
_XL_BASE_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_fc.weight"
_XL_REFINER_KEY = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_fc.weight"
_SD2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Identified:
    family: str
    refiner: bool = False
    inpainting: bool = False
    """An inpainting checkpoint (a 9-channel UNet): it makes images with a mask only."""

    @property
    def config_repo(self) -> str:
        return REFINER_CONFIG if self.refiner else FAMILIES[self.family].config_repo


def checkpoint_family(path: Path) -> Identified | None:
    """The family of a single-file checkpoint from its tensor names (a .safetensors
    header, read without loading a weight); None when the file says nothing readable (a
    pickled .ckpt, which diffusers then takes for SD 1.x)."""
    header = safetensors_header(path)
    if header is None:
        return None
    if _SD3_KEY in header:
        return Identified("sd3")
    if _XL_BASE_KEY in header:
        return Identified("sdxl")
    if _XL_REFINER_KEY in header:
        return Identified("sdxl", refiner=True)
    shape = (
        header.get(_SD2_KEY, {}).get("shape") if isinstance(header.get(_SD2_KEY), dict) else None
    )
    if isinstance(shape, list) and shape and shape[-1] == 1024:
        return Identified("sd2")
    return Identified("sd1")


def safetensors_header(path: Path) -> dict[str, dict[str, object]] | None:
    """The JSON header of a .safetensors file: each tensor's dtype, shape and offsets."""
    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > MAX_HEADER_BYTES:
                return None
            header = json.loads(file.read(length))
    except (OSError, ValueError, struct.error):
        return None
    return header if isinstance(header, dict) else None


def directory_family(path: Path, declared: dict[str, object]) -> Identified | None:
    """The family of a diffusers directory from its `model_index.json` (`declared`) and,
    for Stable Diffusion, its text encoder's width (768: 1.x, 1024: 2.x)."""
    family = PIPELINE_FAMILIES.get(str(declared.get("_class_name")))
    if family is None:
        return None
    refiner = declared.get("_class_name") in REFINER_CLASSES
    inpainting = declared.get("_class_name") in INPAINTING_CLASSES or (
        json_object(path / "unet" / "config.json").get("in_channels") == INPAINTING_UNET_CHANNELS
    )
    if family == "sd1":
        try:
            encoder = json.loads((path / "text_encoder" / "config.json").read_text("utf-8"))
        except (OSError, ValueError):
            encoder = {}
        if isinstance(encoder, dict) and encoder.get("hidden_size") == 1024:
            family = "sd2"
    return Identified(family, refiner, inpainting)


def json_object(path: Path) -> dict[str, object]:
    """The JSON object in the file at `path`; {} where there is none."""
    try:
        read = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return read if isinstance(read, dict) else {}
