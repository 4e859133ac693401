"""The diffusers backend's face to the core: what it is, what it offers, how it is checked,
installed and loaded. Light: nothing here imports torch, and the model host's supervision
loads with `load`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.models import SCHEDULERS, BackendStatus, ComputeUnits
from worker.backends.diffusers.checks import (
    install_extra_hint,
    locate_model,
    missing_modules,
    model_id,
    not_loaded,
)
from worker.backends.diffusers.settings import BACKEND_ID, DEFAULT_MODEL, DiffusersSettings
from worker.settings import EnvironmentReader, Settings
from worker.sizes import SizeTable, standard_table

if TYPE_CHECKING:
    from worker.backends.base import Backend
    from worker.checks import Check
    from worker.host import HostPlatform
    from worker.live import LiveSamplers
    from worker.models import Model


class DiffusersInstaller:
    """`install --backend diffusers`: the model into the Hugging Face cache, one load."""

    name = "diffusers"
    description = (
        "diffusers: downloads the model into the Hugging Face cache (resumable; HF_ENDPOINT "
        "and HF_HOME apply), then loads it once."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> list[str]:
        model = parser.add_argument(
            "--model",
            metavar="REPO_ID",
            help=f"diffusers: the hub repository to download (default: {DEFAULT_MODEL} at "
            "a pinned revision)",
        )
        config_only = parser.add_argument(
            "--config-only",
            action="store_true",
            default=None,
            help="diffusers: only the repository's configuration (json and tokenizer files, "
            "a few MB), which single-file checkpoints of its family need to load offline",
        )
        return [model.dest, config_only.dest]

    def run(self, args: argparse.Namespace, settings: Settings, host: HostPlatform) -> int:
        from worker.backends.diffusers.provision import run_install

        return run_install(args, settings, host)


class DiffusersPlugin:
    id = BACKEND_ID
    names = (BACKEND_ID,)
    schedulers = SCHEDULERS
    compute_units: tuple[ComputeUnits, ...] = ()
    """It runs on its configured device instead."""
    test_only = False
    installer = DiffusersInstaller()

    def read_settings(self, reader: EnvironmentReader, home: Path) -> DiffusersSettings:
        return DiffusersSettings.read(reader, home)

    def describe(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> BackendStatus:
        section = settings.section(DiffusersSettings)
        missing = missing_modules()
        location = locate_model(section)
        loaded = None
        if running is not None:  # loaded by a generate already: no import is added here
            from worker.backends.diffusers.backend import DiffusersBackend

            loaded = running if isinstance(running, DiffusersBackend) else None
        host_status = loaded.status() if loaded is not None else not_loaded(section)
        if missing:
            reason = f"The diffusers extra is not installed (missing: {', '.join(missing)})."
            hint = install_extra_hint()
        elif not location.usable:
            reason, hint = f"{location.problem}.", location.fix
        elif loaded is not None and host_status.last_load_error:
            reason = (
                f"The last load failed: {host_status.last_load_error}. The next job tries again."
            )
            hint = loaded.supervisor.load_fix
        else:
            reason = (
                f"Ready: {location.label} ({location.kind}), loaded by the model host on demand."
            )
            hint = ""
        return BackendStatus(
            id=BACKEND_ID,
            available=not missing and location.usable and not host_status.last_load_error,
            reason=reason,
            missing=missing or ([] if location.usable else [location.text]),
            install_hint=hint,
            model_id=model_id(location, host_status.device),
            sample_binary=None,
            resource_path=str(location.path) if location.path else None,
            test_only=False,
            model_host=host_status,
        )

    def sizes(self, settings: Settings) -> SizeTable:
        """Every standard ratio at the model's native area, and any size on request."""
        section = settings.section(DiffusersSettings)
        model = locate_model(section)
        source = "environment" if section.model_explicit else "default"
        return standard_table(model.path or Path(model.text), source, model.native_side)

    def models(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> list[Model]:
        from worker.backends.diffusers.catalog import find_models

        loaded = None
        if running is not None:  # loaded by a generate already: no import is added here
            from worker.backends.diffusers.backend import DiffusersBackend

            if isinstance(running, DiffusersBackend):
                loaded = running.supervisor.loaded_model
        return find_models(settings.section(DiffusersSettings), missing_modules(), loaded)

    def image_to_image_problem(self, settings: Settings) -> str:
        return ""  # every Stable Diffusion model does it, whenever it runs at all

    def doctor_checks(self, settings: Settings, host: HostPlatform, load: bool) -> list[Check]:
        from worker.backends.diffusers.provision import doctor_checks

        return doctor_checks(settings, load)

    def settings_summary(self, settings: Settings) -> str:
        return settings.section(DiffusersSettings).summary()

    def load(self, settings: Settings, host: HostPlatform, live: LiveSamplers) -> Backend:
        from worker.backends.diffusers.backend import DiffusersBackend

        return DiffusersBackend(settings, live)


PLUGIN = DiffusersPlugin()
