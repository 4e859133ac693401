"""The answer to `capabilities`: what this worker can do on this machine right now."""

from __future__ import annotations

from protocol.models import (
    ASPECT_RATIOS,
    COMPUTE_UNITS,
    GUIDANCE_SCALE_MAX,
    GUIDANCE_SCALE_MIN,
    MAX_IMAGE_COUNT,
    REQUEST_TIMEOUT_MS_MIN,
    SCHEDULERS,
    STEP_COUNT_MAX,
    STEP_COUNT_MIN,
    TIMEOUT_MS_MAX,
    BackendStatus,
    CapabilitiesResult,
    Defaults,
    Features,
    FloatRange,
    IntRange,
    Limits,
    WorkerInfo,
)
from protocol.version import PROTOCOL_VERSION
from worker import __version__
from worker.backends import MOCK_BACKEND_ID, MOCK_MODEL_ID, coreml_install
from worker.host import HostPlatform
from worker.settings import ENV_BACKEND, Settings

WORKER_NAME = "studio-imagegen-worker"


def describe_backend(settings: Settings, host: HostPlatform) -> BackendStatus:
    """The configured backend's state, read from the disk now."""
    if settings.backend is None:
        reason = next(p.reason for p in settings.problems if p.variable == ENV_BACKEND)
        return BackendStatus(
            id=settings.backend_name,
            available=False,
            reason=f"{ENV_BACKEND}={settings.backend_name!r} {reason}.",
            missing=[],
            install_hint=f"export {ENV_BACKEND}=coreml_diffusion",
            model_id="",
            sample_binary=None,
            resource_path=None,
            test_only=False,
        )
    if settings.backend == "mock":
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
    installation = coreml_install.locate_installation(settings, host)
    return BackendStatus(
        id=coreml_install.BACKEND_ID,
        available=installation.available,
        reason=installation.reason,
        missing=list(installation.missing),
        install_hint=installation.install_hint,
        model_id=coreml_install.model_id(settings.compute_units),
        sample_binary=str(installation.sample_binary) if installation.sample_binary else None,
        resource_path=str(installation.resource_path),
        test_only=False,
    )


def describe_capabilities(settings: Settings, host: HostPlatform) -> CapabilitiesResult:
    return CapabilitiesResult(
        protocol_version=PROTOCOL_VERSION,
        worker=WorkerInfo(name=WORKER_NAME, version=__version__),
        platform=host.describe(),
        backend=describe_backend(settings, host),
        limits=Limits(
            max_image_count=MAX_IMAGE_COUNT,
            step_count=IntRange(
                min=STEP_COUNT_MIN, max=STEP_COUNT_MAX, default=settings.step_count
            ),
            guidance_scale=FloatRange(
                min=GUIDANCE_SCALE_MIN, max=GUIDANCE_SCALE_MAX, default=settings.guidance_scale
            ),
            timeout_ms=IntRange(
                min=REQUEST_TIMEOUT_MS_MIN, max=TIMEOUT_MS_MAX, default=settings.timeout_ms
            ),
            max_queue=settings.max_queue,
            max_concurrency=settings.max_concurrency,
        ),
        features=Features(
            text_to_image=True,
            image_to_image=False,
            aspect_ratios=list(ASPECT_RATIOS),
            negative_prompt=True,
            schedulers=list(SCHEDULERS),
            compute_units=list(COMPUTE_UNITS),
            progress=True,
            cancel=True,
        ),
        defaults=Defaults(
            step_count=settings.step_count,
            guidance_scale=settings.guidance_scale,
            scheduler=settings.scheduler,
            compute_units=settings.compute_units,
            disable_safety=settings.disable_safety,
            reduce_memory=settings.reduce_memory,
            timeout_ms=settings.timeout_ms,
        ),
        config_errors=list(settings.problems),
    )
