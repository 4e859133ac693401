"""The Core ML backend's id, its schedulers, and its own variables: where the sampler and
its bundles are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.models import Scheduler
from worker.settings import EnvironmentReader

BACKEND_ID = "coreml_diffusion"
SCHEDULERS: tuple[Scheduler, ...] = ("pndm", "dpmpp")
"""What the sampler's `--scheduler` takes; the environment may pin only one of these."""
ENV_SAMPLE_BIN = "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN"
ENV_RESOURCE_PATH = "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH"
ENV_MODEL_MANIFEST = "SYSTEMSCULPT_LOCAL_DIFFUSION_MODEL_MANIFEST"
ENV_LEGACY_MANIFEST = "SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH"
"""What Studio's later provider read; installs it made may still set it."""
ENV_MODELS_DIR = "SYSTEMSCULPT_LOCAL_DIFFUSION_MODELS_DIR"
"""The folder whose bundles are listed as models (each one a folder holding a denoiser)."""

DEFAULT_CHECKOUT = "gits/apps/ml-stable-diffusion"
"""Relative to the home directory, where the original installer cloned the sampler."""
DEFAULT_SAMPLE_BIN = f"{DEFAULT_CHECKOUT}/.build/release/StableDiffusionSample"
DEFAULT_MODELS_DIR = ".systemsculpt/local-image-models"
SAMPLE_BIN_ON_PATH = "stable-diffusion-sample"
BUNDLE_NAME = "coreml-stable-diffusion-2-1-base-palettized_split_einsum_v2_compiled"
DEFAULT_RESOURCE_PATH = f"{DEFAULT_MODELS_DIR}/{BUNDLE_NAME}/{BUNDLE_NAME}"
"""Relative to the home directory, where the original installer unpacked the bundle."""
DEFAULT_MODEL_MANIFEST = f"{DEFAULT_MODELS_DIR}/model-manifest.json"
"""Relative to the home directory: beside the bundles."""


@dataclass(frozen=True)
class CoreMLSettings:
    """Where the sampler and the model bundles are."""

    sample_bin: Path | None
    """The explicitly configured sampler; None means: look in the default places."""
    default_sample_bin: Path
    resource_path: Path
    resource_path_explicit: bool = False
    """True when SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH names it (the 1:1 bundle)."""
    model_manifest: Path = Path(DEFAULT_MODEL_MANIFEST)
    model_manifest_explicit: bool = False
    models_dir: Path = Path(DEFAULT_MODELS_DIR)

    @classmethod
    def read(cls, reader: EnvironmentReader, home: Path) -> CoreMLSettings:
        sample_bin = reader.raw(ENV_SAMPLE_BIN)
        resources = reader.raw(ENV_RESOURCE_PATH)
        manifest = reader.raw(ENV_MODEL_MANIFEST) or reader.raw(ENV_LEGACY_MANIFEST)
        models = reader.raw(ENV_MODELS_DIR)
        return cls(
            sample_bin=Path(sample_bin).expanduser() if sample_bin else None,
            default_sample_bin=home / DEFAULT_SAMPLE_BIN,
            resource_path=(
                Path(resources).expanduser() if resources else home / DEFAULT_RESOURCE_PATH
            ),
            resource_path_explicit=bool(resources),
            model_manifest=(
                Path(manifest).expanduser() if manifest else home / DEFAULT_MODEL_MANIFEST
            ),
            model_manifest_explicit=bool(manifest),
            models_dir=Path(models).expanduser() if models else home / DEFAULT_MODELS_DIR,
        )
