"""Where the Core ML sampler and its model resources are, and what is missing.

Looked up on every call, so that installing the sampler is seen without a restart.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protocol.models import ComputeUnits
from worker.host import HostPlatform
from worker.settings import (
    BUNDLE_NAME,
    ENV_RESOURCE_PATH,
    ENV_SAMPLE_BIN,
    SAMPLE_BIN_ON_PATH,
    Settings,
)

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
BUILT_BINARY_IN_CHECKOUT = ".build/release/StableDiffusionSample"
INSTALL_COMMAND = "studio-imagegen-worker install"
BUILD_BY_HAND = (
    f"git clone {SAMPLER_REPOSITORY} ~/gits/apps/ml-stable-diffusion && "
    "cd ~/gits/apps/ml-stable-diffusion && "
    "swift build -c release --product StableDiffusionSample"
)
RESOURCES_BY_HAND = (
    f"download {BUNDLE_NAME}.zip from the Hugging Face repository "
    "apple/coreml-stable-diffusion-2-1-base-palettized and unzip it into "
    f"~/.systemsculpt/local-image-models/{BUNDLE_NAME}/ "
    f"(or point {ENV_RESOURCE_PATH} at an unpacked bundle)"
)


def model_id(compute_units: ComputeUnits) -> str:
    return f"{MODEL_ID_PREFIX}:{compute_units}"


CheckStatus = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One thing looked at: its verdict, what was found, and the command that fixes it."""

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""
    by_hand: str = ""
    """The steps `fix` takes, for a person who would rather run them one by one."""
    missing: tuple[str, ...] = ()

    @property
    def fix_text(self) -> str:
        return self.fix + (f" (or by hand: {self.by_hand})" if self.by_hand else "")


@dataclass(frozen=True)
class SamplerInstallation:
    """The outcome of looking for the sampler and its resources on this machine."""

    sample_binary: Path | None
    """The binary that would run (None when none was found)."""
    resource_path: Path
    explicit_binary: bool
    """True when SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN names it (trusted on any OS)."""
    checks: tuple[Check, ...]

    @property
    def available(self) -> bool:
        return all(check.status != "fail" for check in self.checks)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(item for check in self.checks for item in check.missing)

    @property
    def reason(self) -> str:
        failed = [check.detail for check in self.checks if check.status == "fail"]
        if failed:
            return " ".join(failed)
        if self.explicit_binary:
            return (
                f"Using the sampler named by {ENV_SAMPLE_BIN} ({self.sample_binary}); "
                "it is trusted on any platform."
            )
        return f"Ready: {self.sample_binary} with the resources in {self.resource_path}."

    @property
    def install_hint(self) -> str:
        """Each distinct fix once, with the manual steps of every check it fixes."""
        failed = [check for check in self.checks if check.status == "fail" and check.fix]
        hints = []
        for fix in dict.fromkeys(check.fix for check in failed):
            steps = [check.by_hand for check in failed if check.fix == fix and check.by_hand]
            hints.append(fix + (f" (or by hand: {'; then '.join(steps)})" if steps else ""))
        return "; then ".join(hints)


def locate_installation(
    settings: Settings,
    host: HostPlatform,
    which: Callable[[str], str | None] = shutil.which,
    resource_path: Path | None = None,
) -> SamplerInstallation:
    """The platform, sampler and resource checks, in the order `doctor` prints them; the
    resources of the 1:1 bundle unless `resource_path` names another."""
    explicit = settings.sample_bin is not None
    binary = _find_binary(settings, which)
    resources = resource_path if resource_path is not None else settings.resource_path
    return SamplerInstallation(
        sample_binary=binary,
        resource_path=resources,
        explicit_binary=explicit,
        checks=(
            check_platform(host, explicit),
            check_sampler(settings, binary),
            check_resources(resources),
        ),
    )


def check_platform(host: HostPlatform, explicit_binary: bool) -> Check:
    described = f"{host.system} {host.os_version} on {host.machine}"
    if host.runs_core_ml:
        if host.machine != "arm64":
            return Check(
                "platform",
                "warn",
                f"{described}: Core ML runs, but slowly without Apple silicon's Neural Engine.",
            )
        return Check("platform", "ok", f"{described}: Core ML with the Neural Engine.")
    if explicit_binary:
        return Check(
            "platform",
            "ok",
            f"{described}: not macOS, but {ENV_SAMPLE_BIN} names a sampler, which is trusted.",
        )
    return Check(
        "platform",
        "fail",
        f"Core ML Stable Diffusion needs macOS 13.1 or later; this machine runs "
        f"{host.system} {host.os_version}. To drive a sampler anyway (a wrapper, a "
        f"stand-in, a runner that forwards to a Mac), set {ENV_SAMPLE_BIN} to it.",
        fix="run the worker on a Mac with Apple silicon and macOS 13.1 or later",
    )


def check_sampler(settings: Settings, binary: Path | None) -> Check:
    if binary is None:
        expected = settings.sample_bin or settings.default_sample_bin
        if settings.sample_bin is not None:
            return Check(
                "sampler",
                "fail",
                f"{ENV_SAMPLE_BIN} names {expected}, which does not exist.",
                fix=f"point {ENV_SAMPLE_BIN} at the StableDiffusionSample binary",
                missing=(str(expected),),
            )
        return Check(
            "sampler",
            "fail",
            f"StableDiffusionSample was not found at {expected} nor as "
            f"{SAMPLE_BIN_ON_PATH} on PATH.",
            fix=INSTALL_COMMAND,
            by_hand=BUILD_BY_HAND,
            missing=(str(expected),),
        )
    if binary.is_dir():
        return Check(
            "sampler",
            "fail",
            f"The sampler {binary} is a directory, not a program.",
            fix=f"point {ENV_SAMPLE_BIN} at the StableDiffusionSample binary itself (in a "
            f"checkout: {BUILT_BINARY_IN_CHECKOUT})",
        )
    if not binary.is_file():
        return Check(
            "sampler",
            "fail",
            f"The sampler {binary} is not a regular file (a device, a socket or a pipe).",
            fix=f"point {ENV_SAMPLE_BIN} at the StableDiffusionSample binary",
        )
    if not os.access(binary, os.X_OK):
        return Check(
            "sampler",
            "fail",
            f"The sampler {binary} is not executable.",
            fix=f"chmod +x {binary}",
        )
    where = (
        f"named by {ENV_SAMPLE_BIN}"
        if settings.sample_bin is not None
        else "at the default location"
        if binary == settings.default_sample_bin
        else "on PATH"
    )
    return Check("sampler", "ok", f"{binary} ({where}), executable.")


IMAGE_ENCODER = "VAEEncoder.mlmodelc"


def check_image_encoder(resource_path: Path) -> Check:
    """Image-to-image needs the VAE encoder, which not every converted bundle has."""
    if (resource_path / IMAGE_ENCODER).exists():
        return Check("image-to-image", "ok", f"{IMAGE_ENCODER} is there.")
    return Check(
        "image-to-image",
        "fail",
        f"Image-to-image needs {IMAGE_ENCODER}, which is not in {resource_path}.",
        fix="install a bundle converted with its VAE encoder",
        by_hand=(
            "convert the model with apple/ml-stable-diffusion's torch2coreml and "
            "--convert-vae-encoder, then put VAEEncoder.mlmodelc beside the other models"
        ),
        missing=(str(resource_path / IMAGE_ENCODER),),
    )


def check_resources(resource_path: Path) -> Check:
    if resource_path.exists() and not resource_path.is_dir():
        return Check(
            "resources",
            "fail",
            f"The model resource path {resource_path} is a file, not a directory.",
            fix=f"point {ENV_RESOURCE_PATH} at the unpacked bundle's directory (the one that "
            "holds Unet.mlmodelc), or unset it for the default",
        )
    missing = _missing_resources(resource_path)
    if missing == [str(resource_path)]:
        return Check(
            "resources",
            "fail",
            f"The model resource directory {resource_path} does not exist.",
            fix=INSTALL_COMMAND,
            by_hand=RESOURCES_BY_HAND,
            missing=tuple(missing),
        )
    if missing:
        return Check(
            "resources",
            "fail",
            f"The model resources in {resource_path} are incomplete: "
            f"{', '.join(Path(item).name for item in missing)} missing.",
            fix=INSTALL_COMMAND,
            by_hand=RESOURCES_BY_HAND,
            missing=tuple(missing),
        )
    return Check("resources", "ok", f"{resource_path}: every required model file is there.")


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
