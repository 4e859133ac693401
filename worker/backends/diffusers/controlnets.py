"""The diffusers ControlNets on this machine, and which models each one fits.

A ControlNet is a diffusers directory whose `config.json` names `ControlNetModel`: in the
models folder (`SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR`), in its `controlnet/` folder,
or a repository of the Hugging Face cache. It fits a model whose UNet attends to text
of the same width (768: SD 1.x, 1024: SD 2.x, 2048: SDXL), as its config says. Read
from the files only (a few hundred bytes each); nothing is loaded to list them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from worker.backends.diffusers.checks import ModelLocation, cached_repositories
from worker.backends.diffusers.host.families import (
    CONTROLNET_CLASS,
    FAMILIES,
    Family,
    json_object,
)
from worker.controls import ControlNet

CONTROLNET_FOLDER = "controlnet"


@dataclass(frozen=True)
class FoundControlNet:
    controlnet: ControlNet
    text_width: int | None
    """Its `cross_attention_dim`: what it fits."""


def find_controlnets(models_dir: Path) -> list[FoundControlNet]:
    """Every ControlNet directory of the models folder, its `controlnet/` folder and the
    Hugging Face cache, by name; each once."""
    candidates = [
        (entry.name, entry)
        for folder in (models_dir, models_dir / CONTROLNET_FOLDER)
        for entry in _entries(folder)
    ]
    candidates += list(cached_repositories())
    found: dict[str, FoundControlNet] = {}
    for name, path in candidates:
        config = _config(path / "config.json")
        if config.get("_class_name") != CONTROLNET_CLASS or name in found:
            continue
        width = config.get("cross_attention_dim")
        found[name] = FoundControlNet(
            ControlNet(name, path), width if isinstance(width, int) else None
        )
    return [found[name] for name in sorted(found)]


_CONFIGS: dict[Path, tuple[int, dict[str, object]]] = {}
"""Each `config.json` read, by its modification time: listing the models (every
`capabilities` and `generate`) reads only what changed."""


def _config(path: Path) -> dict[str, object]:
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    cached = _CONFIGS.get(path)
    if cached is None or cached[0] != stamp:
        cached = _CONFIGS[path] = (stamp, json_object(path))
    return cached[1]


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(entry for entry in folder.iterdir() if entry.is_dir())
    except OSError:
        return []


def model_text_width(location: ModelLocation, family: Family) -> int:
    """The width of text its UNet attends to: its UNet's config, else its family's."""
    if location.path is not None and location.path.is_dir():
        width = json_object(location.path / "unet" / "config.json").get("cross_attention_dim")
        if isinstance(width, int):
            return width
    return family.text_width


def controls_for(
    location: ModelLocation, family: Family, found: list[FoundControlNet], models_dir: Path
) -> tuple[tuple[ControlNet, ...], str]:
    """The ControlNets the model fits, and why it can use none (with the fix), or ""."""
    if location.refiner:
        return (), "an SDXL refiner takes no ControlNet; choose a base model"
    if not family.controlnet[0]:
        offered = ", ".join(f.title for f in FAMILIES.values() if f.controlnet[0])
        return (), f"ControlNet is not offered for {family.title} here ({offered} have it)"
    width = model_text_width(location, family)
    fitting = tuple(f.controlnet for f in found if f.text_width == width)
    if fitting:
        return fitting, ""
    return (), (
        f"no ControlNet for {family.title} is installed; put a diffusers ControlNet "
        f"directory (such as {family.controlnet_example}) in {models_dir / CONTROLNET_FOLDER}, "
        "or download one into the Hugging Face cache"
    )
