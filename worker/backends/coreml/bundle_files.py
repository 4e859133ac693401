"""What a compiled Core ML bundle is, read from its files alone: its family, whether it is
a refiner, its attention, the size it makes, and which files its family needs.

The family comes from the denoiser's `metadata.json`, as Mochi Diffusion reads it: an
input named `time_ids` or `text_embeds` is SDXL's (a refiner's `time_ids` have 5
values), a multimodal diffusion transformer is SD3's, and otherwise the width of the
text embeddings tells SD 1.x (768) from 2.x (1024). The files each family needs are the
ones the Swift pipelines look up (`StableDiffusionPipeline+Resources.swift` and its XL
and SD3 siblings). What is read is cached by the files' modification times, so listing
the models stays cheap.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from protocol.models import ModelFamily
from worker.controls import ControlNet

UNET = "Unet.mlmodelc"
UNET_CHUNKS = ("UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc")
CONTROLLED_UNET = "ControlledUnet.mlmodelc"
CONTROLLED_UNET_CHUNKS = ("ControlledUnetChunk1.mlmodelc", "ControlledUnetChunk2.mlmodelc")
CONTROLNET_FOLDER = "controlnet"
MMDIT = "MultiModalDiffusionTransformer.mlmodelc"
DENOISERS = (UNET, UNET_CHUNKS[0], CONTROLLED_UNET, CONTROLLED_UNET_CHUNKS[0], MMDIT)
"""A folder holding one of these is a bundle: one model."""
TEXT_ENCODER = "TextEncoder.mlmodelc"
TEXT_ENCODER_2 = "TextEncoder2.mlmodelc"
DECODER = "VAEDecoder.mlmodelc"
ENCODER = "VAEEncoder.mlmodelc"
TOKENIZER = ("vocab.json", "merges.txt")
T5 = ("TextEncoderT5.mlmodelc", "tokenizer.json", "tokenizer_config.json")
"""SD3's optional third encoder: all three files, or none (the CLI then gives it zeros)."""
LATENT_SCALE = 8

Attention = Literal["split_einsum", "original"]


@dataclass(frozen=True)
class BundleFiles:
    path: Path
    family: ModelFamily | None
    """None: a Stable Diffusion 1.x/2.x bundle whose metadata does not say which."""
    refiner: bool
    attention: Attention | None
    size: tuple[int, int] | None
    """The image size it makes, where its files declare it."""
    unet_batch: int | None
    """1 for a UNet converted to run without guidance's second half; else 2."""
    has_text_encoder: bool
    has_image_encoder: bool
    missing: tuple[str, ...]
    """The files its family needs that are not there."""
    partial_t5: bool = False
    controlnets: tuple[ControlNet, ...] = ()
    """The ControlNets of its `controlnet/` folder, with the image size each takes."""
    has_controlled_unet: bool = False
    """The UNet the sampler runs with ControlNets (`ControlledUnet`, whole or chunked)."""

    @property
    def pipeline(self) -> Literal["sd", "sdxl", "sd3"]:
        """Which of the sampler's pipelines runs it (`--xl`, `--sd3`, or neither)."""
        if self.family == "sdxl":
            return "sdxl"
        if self.family == "sd3":
            return "sd3"
        return "sd"


def is_bundle(folder: Path) -> bool:
    return any((folder / name).exists() for name in DENOISERS)


SCAN_DEPTH = 4
"""How deep below a folder bundles are looked for (zips unpack into a folder or two of
their own)."""


def bundles_below(root: Path, depth: int = SCAN_DEPTH) -> list[Path]:
    """Every folder at or below `root`, to `depth` levels, that holds a denoiser, by path;
    never looking inside one, a compiled model or a ControlNet folder."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for folder, subfolders, _files in os.walk(root):
        here = Path(folder)
        if is_bundle(here):
            found.append(here)
            subfolders.clear()
            continue
        level = len(here.relative_to(root).parts)
        subfolders[:] = sorted(
            name
            for name in subfolders
            if level < depth and not name.endswith(".mlmodelc") and name != CONTROLNET_FOLDER
        )
    return sorted(found)


def missing_files(folder: Path, pipeline: Literal["sd", "sdxl", "sd3"]) -> list[str]:
    """What the pipeline for `folder` would fail to load, in the order it loads them."""

    def there(name: str) -> bool:
        return (folder / name).exists()

    unet = there(UNET) or all(map(there, UNET_CHUNKS))
    controlled = there(CONTROLLED_UNET) or all(map(there, CONTROLLED_UNET_CHUNKS))
    if pipeline == "sd3":
        needed = [TEXT_ENCODER, TEXT_ENCODER_2, MMDIT, DECODER, *TOKENIZER]
    elif pipeline == "sdxl":
        needed = [TEXT_ENCODER_2, UNET, DECODER, *TOKENIZER]
    else:
        needed = [TEXT_ENCODER, UNET, DECODER, *TOKENIZER]
    found = {UNET: unet or (pipeline == "sd" and controlled)}
    return [name for name in needed if not found.get(name, there(name))]


_CACHE: dict[Path, tuple[tuple[int, ...], BundleFiles]] = {}


def read_bundle(folder: Path) -> BundleFiles:
    """The bundle at `folder`, from its files (cached while they are unchanged)."""
    denoiser = next((folder / name for name in DENOISERS if (folder / name).exists()), None)
    stamp = tuple(
        _mtime(path)
        for path in (
            folder,
            denoiser and denoiser / "metadata.json",
            folder / DECODER,
            folder / CONTROLNET_FOLDER,
        )
    )
    cached = _CACHE.get(folder)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    bundle = _read(folder, denoiser)
    _CACHE[folder] = (stamp, bundle)
    return bundle


def _mtime(path: Path | None) -> int:
    try:
        return path.stat().st_mtime_ns if path is not None else 0
    except OSError:
        return 0


def _read(folder: Path, denoiser: Path | None) -> BundleFiles:
    metadata = _metadata(denoiser / "metadata.json") if denoiser else {}
    schema = metadata.get("inputSchema")
    inputs = {
        str(item.get("name")): _dimensions(item.get("shape"))
        for item in (schema if isinstance(schema, list) else [])
        if isinstance(item, dict)
    }
    family: ModelFamily | None = None
    refiner = False
    if (denoiser is not None and denoiser.name == MMDIT) or "latent_image_embeddings" in inputs:
        family = "sd3"
    elif "time_ids" in inputs or "text_embeds" in inputs:
        family = "sdxl"
        refiner = (inputs.get("time_ids") or [0])[-1] == 5
    elif (inputs.get("encoder_hidden_states") or [0, 0])[1:2] == [768]:
        family = "sd1"
    elif (inputs.get("encoder_hidden_states") or [0, 0])[1:2] == [1024]:
        family = "sd2"
    histogram = metadata.get("mlProgramOperationTypeHistogram")
    attention: Attention | None = None
    if isinstance(histogram, dict):
        attention = "split_einsum" if "Ios16.einsum" in histogram else "original"
    sample = inputs.get("sample") or inputs.get("latent_image_embeddings") or []
    size = decoder_size(folder) or (
        (sample[3] * LATENT_SCALE, sample[2] * LATENT_SCALE) if len(sample) == 4 else None
    )
    bundle = BundleFiles(
        path=folder,
        family=family,
        refiner=refiner,
        attention=attention,
        size=size,
        unet_batch=sample[0] if len(sample) == 4 else None,
        has_text_encoder=(folder / TEXT_ENCODER).exists(),
        has_image_encoder=(folder / ENCODER).exists(),
        missing=(),
    )
    t5 = [(folder / name).exists() for name in T5]
    return replace(
        bundle,
        missing=tuple(missing_files(folder, bundle.pipeline)),
        partial_t5=family == "sd3" and any(t5) and not all(t5),
        controlnets=_controlnets(folder / CONTROLNET_FOLDER),
        has_controlled_unet=(folder / CONTROLLED_UNET).exists()
        or all((folder / name).exists() for name in CONTROLLED_UNET_CHUNKS),
    )


def _controlnets(folder: Path) -> tuple[ControlNet, ...]:
    """Each compiled model of a bundle's `controlnet/` folder, by name (what the
    sampler's `--controlnet` takes: the file name without `.mlmodelc`), with the size of
    its `controlnet_cond` input [1, 3, H, W], which the sampler does not resize to. A name
    that starts with a dash is left out: the sampler would read it as an option."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return ()
    found = []
    for entry in entries:
        if entry.suffix != ".mlmodelc" or entry.name.startswith("-"):
            continue
        schema = _metadata(entry / "metadata.json").get("inputSchema")
        shape = next(
            (
                _dimensions(item.get("shape"))
                for item in (schema if isinstance(schema, list) else [])
                if isinstance(item, dict) and item.get("name") == "controlnet_cond"
            ),
            [],
        )
        size = (shape[3], shape[2]) if len(shape) == 4 else None
        found.append(ControlNet(entry.stem, entry, size))
    return tuple(found)


def _metadata(path: Path) -> dict[str, object]:
    """A compiled model's metadata: a list of one object (or that object)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if isinstance(document, list) and document and isinstance(document[0], dict):
        return document[0]
    return document if isinstance(document, dict) else {}


def _dimensions(shape: object) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", str(shape))]


def decoder_size(folder: Path) -> tuple[int, int] | None:
    """The VAE decoder's input `z` [1, 4, H/8, W/8]: the size the bundle makes."""
    metadata = _metadata(folder / DECODER / "metadata.json")
    inputs = metadata.get("inputSchema", [])
    if not isinstance(inputs, list):
        return None
    shape = next(
        (
            item.get("shape")
            for item in inputs
            if isinstance(item, dict) and item.get("name") == "z"
        ),
        None,
    )
    dimensions = _dimensions(shape) if shape is not None else []
    if len(dimensions) != 4:
        return None
    return dimensions[3] * LATENT_SCALE, dimensions[2] * LATENT_SCALE
