"""Where the Core ML sampler and its model resources are, and what is missing: the
checks `capabilities` summarises and `doctor` prints, with what only `doctor` adds (the
sampler actually starting, the aspect ratios' bundles, free disk).

Looked up on every call, so that installing the sampler is seen without a restart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from protocol.models import FAMILY_NAMES, ComputeUnits
from worker.backends.coreml.bundle_files import ENCODER, missing_files, read_bundle
from worker.backends.coreml.settings import (
    BUNDLE_NAME,
    ENV_MODEL_MANIFEST,
    ENV_RESOURCE_PATH,
    ENV_SAMPLE_BIN,
    SAMPLE_BIN_ON_PATH,
    CoreMLSettings,
)
from worker.checks import Check
from worker.host import HostPlatform
from worker.sizes import SizeTable

MODEL_ID_PREFIX = "local/macos-coreml-stable-diffusion-2-1-base-palettized"


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

    def with_resources(self, host: HostPlatform, resource_path: Path) -> SamplerInstallation:
        """The same platform and sampler with the bundle at `resource_path`: only the
        checks of the bundle are made again."""
        kept = tuple(check for check in self.checks if check.name in ("platform", "sampler"))
        return replace(
            self,
            resource_path=resource_path,
            checks=(*kept, check_resources(resource_path), *check_family(host, resource_path)),
        )

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
    settings: CoreMLSettings,
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
            *check_family(host, resources),
        ),
    )


FAMILY_MACOS = (14, 0)
"""The sampler builds its SDXL and SD3 pipelines on macOS 14 or later only."""


def check_family(host: HostPlatform, resource_path: Path) -> list[Check]:
    """What the bundle's family needs beyond its files: on a Mac, macOS 14 for SDXL and
    SD3 (below it the sampler ignores --xl and --sd3 and runs the SD 1.x/2.x pipeline on
    the bundle, making the wrong image or failing); for SD3, T5 whole or not at all."""
    if not resource_path.is_dir():
        return []
    bundle = read_bundle(resource_path)
    checks = []
    if bundle.pipeline != "sd" and host.is_macos and host.version < FAMILY_MACOS:
        name = FAMILY_NAMES[bundle.family] if bundle.family else "this family"
        checks.append(
            Check(
                "model family",
                "fail",
                f"{resource_path} is a {name} bundle, which needs macOS 14 or later; "
                f"{host.os_version} would run it with the SD 1.x/2.x pipeline and make the "
                "wrong image.",
                fix="update macOS to 14 or later, or use an SD 1.x/2.x bundle",
            )
        )
    if bundle.partial_t5:
        checks.append(
            Check(
                "model family",
                "fail",
                f"{resource_path} has some of SD3's T5 encoder files but not all of "
                "TextEncoderT5.mlmodelc, tokenizer.json and tokenizer_config.json.",
                fix="add the missing ones, or remove the others (SD3 runs without T5)",
            )
        )
    return checks


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


def check_sampler(settings: CoreMLSettings, binary: Path | None) -> Check:
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


IMAGE_ENCODER = ENCODER


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


def _find_binary(settings: CoreMLSettings, which: Callable[[str], str | None]) -> Path | None:
    if settings.sample_bin is not None:
        return settings.sample_bin if settings.sample_bin.exists() else None
    if settings.default_sample_bin.exists():
        return settings.default_sample_bin
    found = which(SAMPLE_BIN_ON_PATH)
    return Path(found) if found else None


def _missing_resources(resource_path: Path) -> list[str]:
    """What the sampler's pipeline for this bundle's family would not find, as paths (the
    original provider's order for SD 1.x/2.x)."""
    if not resource_path.is_dir():
        return [str(resource_path)]
    pipeline = read_bundle(resource_path).pipeline
    return [str(resource_path / name) for name in missing_files(resource_path, pipeline)]


SAMPLER_HELP_TIMEOUT_SECONDS = 20
MIN_FREE_BYTES_INSTALLED = 1 << 30
"""Room for outputs and temporary files once the bundle is in place."""
MIN_FREE_BYTES_TO_INSTALL = 5 << 30
"""The zip (about 1.1 GB), its unpacked copy, and the sampler's build."""


def doctor_checks(settings: CoreMLSettings, host: HostPlatform, sizes: SizeTable) -> list[Check]:
    """Everything `capabilities` looks at, then the sampler's `--help`, the image encoder,
    the bundles of the aspect ratios and free disk."""
    installation = locate_installation(settings, host)
    checks = list(installation.checks)
    sampler_ok = next(c for c in checks if c.name == "sampler").status == "ok"
    if installation.sample_binary is not None and sampler_ok:
        checks.insert(2, check_sampler_starts([str(installation.sample_binary), "--help"]))
    resources_ok = next(c for c in checks if c.name == "resources").status == "ok"
    if resources_ok:
        encoder = check_image_encoder(settings.resource_path)
        # text-to-image works without it: a warning, with the fix
        checks.append(replace(encoder, status="warn") if encoder.status == "fail" else encoder)
    checks.append(check_aspect_ratios(sizes))
    checks.append(check_free_disk(settings.resource_path, installed=resources_ok))
    return checks


def check_aspect_ratios(sizes: SizeTable) -> Check:
    """Which ratios have their bundle; a manifest entry that disagrees with its bundle, or
    a manifest that cannot be read, fails."""
    where = f"model manifest {sizes.manifest_path}" if sizes.manifest_path else "no model manifest"
    ratios = ", ".join(
        f"{ratio} {'ok' if option.usable else 'missing' if not option.present else 'wrong'}"
        for ratio, option in sizes.options.items()
    )
    if sizes.problems:
        return Check(
            "aspect ratios",
            "fail",
            f"{where}: " + "; ".join(problem.reason for problem in sizes.problems),
            fix=f"fix the manifest ({ENV_MODEL_MANIFEST}) or the bundles it names",
        )
    missing = [ratio for ratio, option in sizes.options.items() if not option.present]
    if missing and sizes.manifest_path is not None:
        return Check(
            "aspect ratios",
            "warn",
            f"{where}: {ratios}.",
            fix="convert and install the bundles for " + ", ".join(missing),
        )
    return Check("aspect ratios", "ok", f"{where}: {ratios}.")


def check_sampler_starts(argv: Sequence[str]) -> Check:
    """The sampler answers `--help`: it is a program this machine can run."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=SAMPLER_HELP_TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Check(
            "sampler runs",
            "fail",
            f"`{' '.join(argv)}` did not answer within {SAMPLER_HELP_TIMEOUT_SECONDS} s.",
            fix="rebuild it: studio-imagegen-worker install",
        )
    except OSError as exc:
        return Check(
            "sampler runs",
            "fail",
            f"`{' '.join(argv)}` could not start: {exc.strerror or exc}.",
            fix="rebuild it for this machine: studio-imagegen-worker install",
        )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check(
            "sampler runs",
            "fail",
            f"`{' '.join(argv)}` exited with code {result.returncode}: {tail[0]}",
            fix="rebuild it: studio-imagegen-worker install",
        )
    return Check("sampler runs", "ok", "`--help` answers.")


def check_free_disk(resource_path: Path, installed: bool) -> Check:
    probe = resource_path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    needed = MIN_FREE_BYTES_INSTALLED if installed else MIN_FREE_BYTES_TO_INSTALL
    detail = f"{free / (1 << 30):.1f} GiB free on the volume of {probe}"
    if free < needed:
        purpose = "to run" if installed else "to install the model"
        return Check(
            "free disk",
            "warn",
            f"{detail}; {needed / (1 << 30):.0f} GiB or more is advised {purpose}.",
            fix="free some space on that volume",
        )
    return Check("free disk", "ok", detail + ".")
