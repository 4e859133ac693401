"""The one place that maps the configured backend to what describes it and what runs it.

`capabilities` asks for the description (cheap: reads the disk), `generate` for the
backend itself (loaded on first use, with whatever it needs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.models import BackendStatus
from worker.backends import (
    COREML_BACKEND_ID,
    MOCK_BACKEND_ID,
    MOCK_MODEL_ID,
    BackendId,
    coreml_checks,
)
from worker.host import HostPlatform
from worker.live import LiveSamplers
from worker.settings import ENV_BACKEND, Settings

if TYPE_CHECKING:
    from worker.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    id: BackendId
    describe: Callable[[Settings, HostPlatform], BackendStatus]
    load: Callable[[Settings, HostPlatform, LiveSamplers], Backend]


def _describe_mock(settings: Settings, host: HostPlatform) -> BackendStatus:
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


def _describe_coreml(settings: Settings, host: HostPlatform) -> BackendStatus:
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


BACKENDS: dict[BackendId, BackendEntry] = {
    COREML_BACKEND_ID: BackendEntry(COREML_BACKEND_ID, _describe_coreml, _load_coreml),
    MOCK_BACKEND_ID: BackendEntry(MOCK_BACKEND_ID, _describe_mock, _load_mock),
}


def describe_image_to_image(settings: Settings) -> str:
    """Why image-to-image cannot run with the configured backend; empty when it can."""
    if settings.backend == MOCK_BACKEND_ID:
        return ""
    if settings.backend is None:
        return f"{ENV_BACKEND} names no backend."
    encoder = coreml_checks.check_image_encoder(settings.resource_path)
    return "" if encoder.status == "ok" else f"{encoder.detail} To fix: {encoder.fix_text}."


def describe_backend(settings: Settings, host: HostPlatform) -> BackendStatus:
    """The configured backend's state, read from the disk now."""
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
    return BACKENDS[settings.backend].describe(settings, host)
