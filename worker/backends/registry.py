"""The one place that maps the configured backend to what describes it and what runs it.

`capabilities` asks for the description (cheap: reads the disk), `generate` for the
backend itself (loaded on first use, with whatever it needs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.models import COMPUTE_UNITS, BackendStatus, ComputeUnits, Scheduler
from worker.backends import (
    BACKEND_SCHEDULERS,
    COREML_BACKEND_ID,
    DIFFUSERS_BACKEND_ID,
    MOCK_BACKEND_ID,
    MOCK_MODEL_ID,
    BackendId,
    coreml_checks,
    diffusers_checks,
)
from worker.host import HostPlatform
from worker.live import LiveSamplers
from worker.settings import ENV_BACKEND, Settings

if TYPE_CHECKING:
    from worker.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    id: BackendId
    describe: Callable[[Settings, HostPlatform, Backend | None], BackendStatus]
    """From the settings and the disk, and the running backend if a job has loaded it."""
    load: Callable[[Settings, HostPlatform, LiveSamplers], Backend]
    schedulers: tuple[Scheduler, ...]
    compute_units: tuple[ComputeUnits, ...]
    """Core ML's; the diffusers backend runs on its configured device instead."""
    custom_sizes: bool
    """Any width and height (multiples of 8) within the protocol's range; False: only the
    sizes the bundles make."""


def _describe_mock(
    settings: Settings, host: HostPlatform, running: Backend | None
) -> BackendStatus:
    return BackendStatus(
        id=MOCK_BACKEND_ID,
        available=True,
        reason="Test-only procedural backend: deterministic patterns, not diffusion.",
        missing=[],
        install_hint="",
        model_id=MOCK_MODEL_ID,
        sample_binary=None,
        resource_path=None,
        test_only=True,
    )


def _load_mock(settings: Settings, host: HostPlatform, live: LiveSamplers) -> Backend:
    from worker.backends.mock import MockBackend

    return MockBackend()


def _describe_coreml(
    settings: Settings, host: HostPlatform, running: Backend | None
) -> BackendStatus:
    installation = coreml_checks.locate_installation(settings, host)
    return BackendStatus(
        id=COREML_BACKEND_ID,
        available=installation.available,
        reason=installation.reason,
        missing=list(installation.missing),
        install_hint=installation.install_hint,
        model_id=coreml_checks.model_id(settings.compute_units),
        sample_binary=str(installation.sample_binary) if installation.sample_binary else None,
        resource_path=str(installation.resource_path),
        test_only=False,
    )


def _load_coreml(settings: Settings, host: HostPlatform, live: LiveSamplers) -> Backend:
    from worker.backends.coreml import CoreMLBackend

    return CoreMLBackend(settings, host, live)


def _describe_diffusers(
    settings: Settings, host: HostPlatform, running: Backend | None
) -> BackendStatus:
    missing = diffusers_checks.missing_modules()
    location = diffusers_checks.locate_model(settings)
    loaded = None
    if running is not None:  # loaded by a generate already: no import is added here
        from worker.backends.diffusers import DiffusersBackend

        loaded = running if isinstance(running, DiffusersBackend) else None
    host_status = loaded.status() if loaded is not None else None
    if missing:
        reason = f"The diffusers extra is not installed (missing: {', '.join(missing)})."
        hint = diffusers_checks.INSTALL_EXTRA
    elif not location.usable:
        reason, hint = f"{location.problem}.", location.fix
    elif loaded is not None and host_status is not None and host_status.last_load_error:
        reason = f"The last load failed: {host_status.last_load_error}. The next job tries again."
        hint = loaded.load_fix
    else:
        reason = f"Ready: {location.label} ({location.kind}), loaded by the model host on demand."
        hint = ""
    if host_status is None:
        host_status = diffusers_checks.not_loaded(settings)
    return BackendStatus(
        id=DIFFUSERS_BACKEND_ID,
        available=not missing and location.usable and not host_status.last_load_error,
        reason=reason,
        missing=missing or ([] if location.usable else [location.text]),
        install_hint=hint,
        model_id=diffusers_checks.model_id(location, host_status.device),
        sample_binary=None,
        resource_path=str(location.path) if location.path else None,
        test_only=False,
        model_host=host_status,
    )


def _load_diffusers(settings: Settings, host: HostPlatform, live: LiveSamplers) -> Backend:
    from worker.backends.diffusers import DiffusersBackend

    return DiffusersBackend(settings, live)


BACKENDS: dict[BackendId, BackendEntry] = {
    COREML_BACKEND_ID: BackendEntry(
        COREML_BACKEND_ID,
        _describe_coreml,
        _load_coreml,
        BACKEND_SCHEDULERS[COREML_BACKEND_ID],
        COMPUTE_UNITS,
        custom_sizes=False,
    ),
    DIFFUSERS_BACKEND_ID: BackendEntry(
        DIFFUSERS_BACKEND_ID,
        _describe_diffusers,
        _load_diffusers,
        BACKEND_SCHEDULERS[DIFFUSERS_BACKEND_ID],
        (),
        custom_sizes=True,
    ),
    MOCK_BACKEND_ID: BackendEntry(
        MOCK_BACKEND_ID,
        _describe_mock,
        _load_mock,
        BACKEND_SCHEDULERS[MOCK_BACKEND_ID],
        COMPUTE_UNITS,
        custom_sizes=True,
    ),
}


def describe_image_to_image(settings: Settings) -> str:
    """Why image-to-image cannot run with the configured backend; empty when it can."""
    if settings.backend in (MOCK_BACKEND_ID, DIFFUSERS_BACKEND_ID):
        return ""  # both make any image from a reference, whenever they run at all
    if settings.backend is None:
        return f"{ENV_BACKEND} names no backend."
    encoder = coreml_checks.check_image_encoder(settings.resource_path)
    return "" if encoder.status == "ok" else f"{encoder.detail} To fix: {encoder.fix_text}."


def describe_backend(
    settings: Settings, host: HostPlatform, running: Backend | None = None
) -> BackendStatus:
    """The configured backend's state, read from the disk now, and from `running`, the
    backend that serves `generate` once one has run."""
    if settings.backend is None:
        reason = next(p.reason for p in settings.problems if p.variable == ENV_BACKEND)
        return BackendStatus(
            id=settings.backend_name,
            available=False,
            reason=f"{ENV_BACKEND}={settings.backend_name!r} {reason}.",
            missing=[],
            install_hint=f"export {ENV_BACKEND}={COREML_BACKEND_ID}",
            model_id="",
            sample_binary=None,
            resource_path=None,
            test_only=False,
        )
    return BACKENDS[settings.backend].describe(settings, host, running)
