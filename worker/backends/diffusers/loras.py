"""The diffusers LoRAs on this machine, and which models each one fits.

A LoRA is a `.safetensors` file in the LoRA folder (`SYSTEMSCULPT_LOCAL_DIFFUSERS_LORAS_DIR`,
by default the models folder's `loras/`) or a folder inside it, named by its path there
without the suffix (`style`, `sdxl/pixel-art`). Both layouts people download are read:
diffusers' and PEFT's (`unet.….attn2.to_k.lora_A.weight`) and kohya's
(`lora_unet_…_attn2_to_k.lora_down.weight`), and SD 3's in diffusers' layout
(`transformer.transformer_blocks.0.attn.to_k.lora_A.weight`, what diffusers' SD 3 loader
reads). What it fits is told from its header alone (a few kilobytes; no tensor is read):
for a UNet, the width of the text its cross-attention reads, 768 for SD 1.x, 1024 for
SD 2.x, 2048 for SDXL, the same rule as ControlNets'; for SD 3, its transformer's width.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocol.models import ModelFamily
from worker.backends.diffusers.checks import ModelLocation
from worker.backends.diffusers.controlnets import model_text_width
from worker.backends.diffusers.host.families import Family, json_object
from worker.loras import Lora

logger = logging.getLogger(__name__)

LORA_SUFFIX = ".safetensors"
HEADER_MAX_BYTES = 64 * 1024 * 1024
"""safetensors' own bound on a header: anything larger is not one."""
FAMILY_WIDTHS: dict[int, ModelFamily] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TEXT_KEY = re.compile(r"attn2[._]to_k[._].*(lora_A|lora_down|lora\.down)")
"""A key of the cross-attention's text projection, whose input is the text's width."""
_SD3_KEY = re.compile(r"^transformer\.transformer_blocks\.\d+\.attn\.to_k\.lora_A\.")
"""A key of an SD 3 joint attention's image projection, whose input is the
transformer's width."""

_FOUND: dict[Path, tuple[int, Lora | None]] = {}
"""Each file read, by its modification time: listing (every `capabilities` and
`generate`) reads only what changed."""


def find_loras(folder: Path) -> list[Lora]:
    """Every LoRA in `folder` and its folders, by name."""
    try:
        files = sorted(folder.rglob(f"*{LORA_SUFFIX}"))
    except OSError:
        return []
    found = []
    for path in files:
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            continue
        cached = _FOUND.get(path)
        if cached is None or cached[0] != stamp:
            name = path.relative_to(folder).with_suffix("").as_posix()
            cached = _FOUND[path] = (stamp, read_lora(path, name))
        if cached[1] is not None:
            found.append(cached[1])
    return found


def read_lora(path: Path, name: str) -> Lora | None:
    """The LoRA in `path`, told from its header; None (logged) for a file that is not a
    LoRA of a model this backend runs."""
    try:
        with path.open("rb") as file:
            (size,) = struct.unpack("<Q", file.read(8))
            if size > HEADER_MAX_BYTES:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(file.read(size))
    except (OSError, ValueError, struct.error) as exc:
        logger.warning("%s is not a readable safetensors file (%s); not listed", path, exc)
        return None
    width = _input_width(header, _TEXT_KEY)
    if width is not None:
        return Lora(name=name, path=path, family=FAMILY_WIDTHS.get(width), width=width)
    width = _input_width(header, _SD3_KEY)
    if width is not None:
        return Lora(name=name, path=path, family="sd3", width=width)
    logger.warning(
        "%s holds no UNet or SD 3 transformer LoRA weights this backend reads; not listed", path
    )
    return None


def _input_width(header: dict[str, object], keys: re.Pattern[str]) -> int | None:
    """The input width of the first LoRA matrix whose key matches `keys`."""
    for key, entry in header.items():
        if keys.search(key) and isinstance(entry, dict):
            shape = entry.get("shape")
            if isinstance(shape, list) and len(shape) >= 2 and isinstance(shape[1], int):
                return shape[1]
    return None


def peft_missing() -> bool:
    """diffusers applies LoRAs through PEFT, a package of the diffusers extra."""
    return importlib.util.find_spec("peft") is None


@dataclass(frozen=True)
class LoraFit:
    """What a model makes of the LoRAs found."""

    fitting: tuple[Lora, ...]
    others: tuple[Lora, ...]
    problem: str
    """Why it can apply none, and the fix; empty when it can."""
    applies: bool
    """It applies LoRAs at all (with none installed, a name is -32602, not -32001)."""


def fit_loras(location: ModelLocation, family: Family, found: list[Lora], folder: Path) -> LoraFit:
    """The LoRAs the model fits (the width of the text its UNet reads, or of its SD 3
    transformer), and the others."""
    fits = _fits_sd3(location) if family.name == "sd3" else _fits_unet(location, family)
    fitting = tuple(lora for lora in found if fits(lora))
    others = tuple(lora for lora in found if not fits(lora))
    if location.refiner:
        problem = "a LoRA is applied to a base model; choose one"
        return LoraFit((), tuple(found), problem, applies=False)
    if peft_missing():
        problem = "the peft package is missing; install the diffusers extra again"
        return LoraFit(fitting, others, problem, applies=False)
    if fitting:
        return LoraFit(fitting, others, "", applies=True)
    problem = f"no LoRA for {family.title} is installed; put its .safetensors file in {folder}"
    return LoraFit((), others, problem, applies=True)


def _fits_unet(location: ModelLocation, family: Family) -> Callable[[Lora], bool]:
    width = model_text_width(location, family)
    return lambda lora: lora.family != "sd3" and lora.width == width


def _fits_sd3(location: ModelLocation) -> Callable[[Lora], bool]:
    """An SD 3 LoRA of its transformer's width; of any width when the model is one file
    (its width is then not read; a LoRA of another size fails to load, saying so)."""
    width = None
    if location.path is not None and location.path.is_dir():
        config = json_object(location.path / "transformer" / "config.json")
        heads, head_width = config.get("num_attention_heads"), config.get("attention_head_dim")
        if isinstance(heads, int) and isinstance(head_width, int):
            width = heads * head_width
    return lambda lora: lora.family == "sd3" and width in (None, lora.width)
