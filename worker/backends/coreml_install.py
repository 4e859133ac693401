"""Where the Core ML sampler and its model resources are, and what is missing.

Looked up on every call, so that installing the sampler is seen without a restart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocol.models import ComputeUnits
from worker.host import HostPlatform
from worker.settings import (
    BUNDLE_NAME,
    ENV_RESOURCE_PATH,
    ENV_SAMPLE_BIN,
    SAMPLE_BIN_ON_PATH,
    Settings,
)

BACKEND_ID = "coreml_diffusion"
MODEL_ID_PREFIX = "local/macos-coreml-stable-diffusion-2-1-base-palettized"

UNET = "Unet.mlmodelc"
REQUIRED_RESOURCES = (
    "TextEncoder.mlmodelc",
    UNET,
    "VAEDecoder.mlmodelc",
    "vocab.json",
    "merges.txt",
)
"""In the original provider's order; the Unet may also be split in two chunks."""
UNET_CHUNKS = ("UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc")

SAMPLER_REPOSITORY = "https://github.com/apple/ml-stable-diffusion"
BUILD_HINT = (
    f"git clone {SAMPLER_REPOSITORY} ~/gits/apps/ml-stable-diffusion && "
    "cd ~/gits/apps/ml-stable-diffusion && "
    "swift build -c release --product StableDiffusionSample"
)
RESOURCES_HINT = (
    f"download {BUNDLE_NAME}.zip from the Hugging Face repository "
    "apple/coreml-stable-diffusion-2-1-base-palettized and unzip it into "
    f"~/.systemsculpt/local-image-models/{BUNDLE_NAME}/ "
    f"(or point {ENV_RESOURCE_PATH} at an unpacked bundle)"
)


def model_id(compute_units: ComputeUnits) -> str:
    return f"{MODEL_ID_PREFIX}:{compute_units}"


@dataclass(frozen=True)
class SamplerInstallation:
    """The outcome of looking for the sampler and its resources on this machine."""

    sample_binary: Path | None
    """The binary that would run (None when none was found)."""
    resource_path: Path
    explicit_binary: bool
    """True when SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN names it (trusted on any OS)."""
    missing: tuple[str, ...]
    problems: tuple[str, ...]
    """What stops it from running, each in words a person can act on."""
    hints: tuple[str, ...]

    @property
    def available(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        if self.problems:
            return " ".join(self.problems)
        if self.explicit_binary:
            return (
                f"Using the sampler named by {ENV_SAMPLE_BIN} ({self.sample_binary}); "
                "it is trusted on any platform."
            )
        return f"Ready: {self.sample_binary} with the resources in {self.resource_path}."

    @property
    def install_hint(self) -> str:
        return "; then ".join(self.hints)


def locate_installation(
    settings: Settings,
    host: HostPlatform,
    which: Callable[[str], str | None] = shutil.which,
) -> SamplerInstallation:
    missing: list[str] = []
    problems: list[str] = []
    hints: list[str] = []
    explicit = settings.sample_bin is not None
    binary = _find_binary(settings, which)

    if not explicit and not host.runs_core_ml:
        problems.append(
            f"Core ML Stable Diffusion needs macOS 13.1 or later; this machine runs "
            f"{host.system} {host.os_version}. To drive a sampler anyway (a wrapper, a "
            f"stand-in, a runner that forwards to a Mac), set {ENV_SAMPLE_BIN} to it."
        )
    if binary is None:
        expected = settings.sample_bin or settings.default_sample_bin
        missing.append(str(expected))
        if explicit:
            problems.append(f"{ENV_SAMPLE_BIN} names {expected}, which does not exist.")
            hints.append(f"point {ENV_SAMPLE_BIN} at the StableDiffusionSample binary")
        else:
            problems.append(
                f"StableDiffusionSample was not found at {expected} nor as "
                f"{SAMPLE_BIN_ON_PATH} on PATH."
            )
            hints.append(BUILD_HINT)
    elif not (binary.is_file() and os.access(binary, os.X_OK)):
        problems.append(f"The sampler {binary} is not an executable file.")
        hints.append(f"chmod +x {binary}")

    resource_missing = _missing_resources(settings.resource_path)
    if resource_missing == [str(settings.resource_path)]:
        missing.extend(resource_missing)
        problems.append(f"The model resource directory {settings.resource_path} does not exist.")
        hints.append(RESOURCES_HINT)
    elif resource_missing:
        missing.extend(resource_missing)
        problems.append(
            f"The model resources in {settings.resource_path} are incomplete: "
            f"{', '.join(Path(item).name for item in resource_missing)} missing."
        )
        hints.append(RESOURCES_HINT)

    return SamplerInstallation(
        sample_binary=binary,
        resource_path=settings.resource_path,
        explicit_binary=explicit,
        missing=tuple(missing),
        problems=tuple(problems),
        hints=tuple(hints),
    )


def _find_binary(settings: Settings, which: Callable[[str], str | None]) -> Path | None:
    if settings.sample_bin is not None:
        return settings.sample_bin if settings.sample_bin.exists() else None
    if settings.default_sample_bin.exists():
        return settings.default_sample_bin
    found = which(SAMPLE_BIN_ON_PATH)
    return Path(found) if found else None


def _missing_resources(resource_path: Path) -> list[str]:
    if not resource_path.is_dir():
        return [str(resource_path)]
    has_unet = (resource_path / UNET).exists() or all(
        (resource_path / chunk).exists() for chunk in UNET_CHUNKS
    )
    return [
        str(resource_path / name)
        for name in REQUIRED_RESOURCES
        if not (has_unet if name == UNET else (resource_path / name).exists())
    ]
