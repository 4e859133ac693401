"""The Core ML backend's face to the core: what it is, what it offers, how it is checked,
installed and loaded. Light: the sampler's supervision loads with `load`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.models import COMPUTE_UNITS, BackendStatus, ComputeUnits
from worker.backends.coreml.bundles import load_manifest
from worker.backends.coreml.checks import (
    check_image_encoder,
    doctor_checks,
    locate_installation,
    model_id,
)
from worker.backends.coreml.published import PUBLISHED
from worker.backends.coreml.settings import BACKEND_ID, SCHEDULERS, CoreMLSettings
from worker.settings import EnvironmentReader, Settings
from worker.sizes import SizeTable

if TYPE_CHECKING:
    from worker.backends.base import Backend
    from worker.checks import Check
    from worker.host import HostPlatform
    from worker.live import LiveSamplers
    from worker.models import Model


class CoreMLInstaller:
    """`install --backend coreml`: the sampler cloned and built, the bundle fetched."""

    name = "coreml"
    description = (
        "Core ML: every step is skipped when already done. Commands and addresses can also "
        "be set with SYSTEMSCULPT_LOCAL_INSTALL_{PREFIX,MODELS_DIR,GIT,SWIFT,REPOSITORY_URL,"
        "MODEL_URL,MODEL_SIZE,MODEL_SHA256,SAMPLER_COMMIT}."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> list[str]:
        added = [
            parser.add_argument(
                "--prefix", type=Path, help="where to clone apple/ml-stable-diffusion"
            ),
            parser.add_argument("--models-dir", type=Path, help="where to unpack the model bundle"),
            parser.add_argument("--git", help="the git command (default: git)"),
            parser.add_argument("--swift", help="the swift command (default: swift)"),
            parser.add_argument("--repository-url", help="where to clone the sampler from"),
            parser.add_argument("--model-url", help="where to download the bundle zip from"),
            parser.add_argument(
                "--model-size",
                type=int,
                help="override the pinned size of the bundle zip, in bytes",
            ),
            parser.add_argument(
                "--model-sha256", help="override the pinned SHA-256 of the bundle zip"
            ),
            parser.add_argument(
                "--bundle",
                choices=sorted(PUBLISHED),
                help="which published bundle to fetch: "
                + "; ".join(f"{b.name}: {b.title}" for b in PUBLISHED.values())
                + " (default: sd21, the one the worker runs unless told otherwise)",
            ),
            parser.add_argument(
                "--sampler-commit",
                help="the apple/ml-stable-diffusion commit to build (default: a pinned one "
                "that has --xl and --sd3)",
            ),
        ]
        return [action.dest for action in added]

    def run(self, args: argparse.Namespace, settings: Settings, host: HostPlatform) -> int:
        from worker.backends.coreml.install import run_install

        return run_install(args, settings, host)


class CoreMLPlugin:
    id = BACKEND_ID
    names = ("coreml", BACKEND_ID)
    schedulers = SCHEDULERS
    compute_units: tuple[ComputeUnits, ...] = COMPUTE_UNITS
    test_only = False

    installer = CoreMLInstaller()

    def read_settings(self, reader: EnvironmentReader, home: Path) -> CoreMLSettings:
        return CoreMLSettings.read(reader, home)

    def describe(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> BackendStatus:
        installation = locate_installation(settings.section(CoreMLSettings), host)
        return BackendStatus(
            id=BACKEND_ID,
            available=installation.available,
            reason=installation.reason,
            missing=list(installation.missing),
            install_hint=installation.install_hint,
            model_id=model_id(settings.compute_units),
            sample_binary=str(installation.sample_binary) if installation.sample_binary else None,
            resource_path=str(installation.resource_path),
            test_only=False,
        )

    def sizes(self, settings: Settings) -> SizeTable:
        return load_manifest(settings.section(CoreMLSettings))

    def models(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> list[Model]:
        from worker.backends.coreml.catalog import find_models

        return find_models(settings.section(CoreMLSettings), host)

    def image_to_image_problem(self, settings: Settings) -> str:
        encoder = check_image_encoder(settings.section(CoreMLSettings).resource_path)
        return "" if encoder.status == "ok" else f"{encoder.detail} To fix: {encoder.fix_text}."

    def doctor_checks(self, settings: Settings, host: HostPlatform, load: bool) -> list[Check]:
        return doctor_checks(settings.section(CoreMLSettings), host, self.sizes(settings))

    def settings_summary(self, settings: Settings) -> str:
        return settings.compute_units

    def load(self, settings: Settings, host: HostPlatform, live: LiveSamplers) -> Backend:
        from worker.backends.coreml.backend import CoreMLBackend

        return CoreMLBackend(settings, host, live)


PLUGIN = CoreMLPlugin()
