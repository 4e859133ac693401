"""The answer to `capabilities`: what this worker can do on this machine right now."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from protocol.models import (
    COMPUTE_UNITS,
    GUIDANCE_SCALE_MAX,
    GUIDANCE_SCALE_MIN,
    IMAGE_SIDE_MAX,
    IMAGE_SIDE_MIN,
    MAX_BATCH_MEMBERS,
    MAX_IMAGE_COUNT,
    MAX_REFERENCE_BYTES,
    MAX_REFERENCE_PIXELS,
    PREVIEW_MAX_SIDE,
    QUALITY_PRESETS,
    REFERENCE_INFLUENCE_STRENGTHS,
    REQUEST_TIMEOUT_MS_MIN,
    STEP_COUNT_MAX,
    STEP_COUNT_MIN,
    TIMEOUT_MS_MAX,
    AspectRatioBundle,
    CapabilitiesResult,
    Features,
    FloatRange,
    IntRange,
    Limits,
    WorkerInfo,
)
from protocol.version import PROTOCOL_VERSION
from worker import __version__
from worker.backends.registry import describe_backend, plugin_for
from worker.catalog import default_model, list_models
from worker.host import HostPlatform
from worker.settings import ENV_BACKEND, Settings
from worker.sizes import STANDARD_SIZES, SizeOption, SizeTable

if TYPE_CHECKING:  # the backends load with the first generate; capabilities stays light
    from worker.backends.base import Backend

WORKER_NAME = "studio-imagegen-worker"


def describe_capabilities(
    settings: Settings, host: HostPlatform, running: Mapping[str, Backend] | None = None
) -> CapabilitiesResult:
    """`running`: the backends `generate` has used, by id (their live state)."""
    running = running or {}
    plugin = plugin_for(settings)
    models = list_models(settings, host, running) if plugin is not None else []
    defaults = settings.sampling_defaults()
    default = default_model(models)
    if plugin is None:
        sizes, image_to_image_reason = SizeTable({}), f"{ENV_BACKEND} names no backend."
    else:
        sizes, image_to_image_reason = (
            plugin.sizes(settings),
            plugin.image_to_image_problem(settings),
        )
    return CapabilitiesResult(
        protocol_version=PROTOCOL_VERSION,
        worker=WorkerInfo(name=WORKER_NAME, version=__version__),
        platform=host.describe(),
        backend=describe_backend(settings, host, running.get(settings.backend or "")),
        limits=Limits(
            max_image_count=MAX_IMAGE_COUNT,
            max_reference_bytes=MAX_REFERENCE_BYTES,
            max_reference_pixels=MAX_REFERENCE_PIXELS,
            step_count=IntRange(
                min=STEP_COUNT_MIN, max=STEP_COUNT_MAX, default=settings.step_count
            ),
            guidance_scale=FloatRange(
                min=GUIDANCE_SCALE_MIN, max=GUIDANCE_SCALE_MAX, default=settings.guidance_scale
            ),
            timeout_ms=IntRange(
                min=REQUEST_TIMEOUT_MS_MIN, max=TIMEOUT_MS_MAX, default=settings.timeout_ms
            ),
            strength=FloatRange(
                min=0.0, max=1.0, default=REFERENCE_INFLUENCE_STRENGTHS["balanced"]
            ),
            preview_every=IntRange(min=0, max=STEP_COUNT_MAX, default=0),
            width=_side_range(sizes, lambda option: option.width),
            height=_side_range(sizes, lambda option: option.height),
            max_queue=settings.max_queue,
            max_concurrency=settings.max_concurrency,
            max_batch_members=MAX_BATCH_MEMBERS,
        ),
        features=Features(
            text_to_image=True,
            image_to_image=not image_to_image_reason,
            image_to_image_reason=image_to_image_reason,
            reference_influences=dict(REFERENCE_INFLUENCE_STRENGTHS),
            aspect_ratios=sizes.usable_ratios,
            custom_sizes=sizes.custom_sizes,
            aspect_ratio_bundles=[
                AspectRatioBundle(
                    ratio=option.ratio,
                    width=option.width,
                    height=option.height,
                    resource_path=str(option.resource_path),
                    present=option.present,
                    problem=option.problem,
                )
                for option in sizes.options.values()
            ],
            negative_prompt=True,
            schedulers=list(default.schedulers if default else plugin.schedulers if plugin else ()),
            compute_units=list(plugin.compute_units if plugin else COMPUTE_UNITS),
            progress=True,
            cancel=True,
            previews=True,
            preview_max_side=PREVIEW_MAX_SIDE,
            quality_presets=list(QUALITY_PRESETS.values()),
        ),
        defaults=defaults,
        config_errors=[*settings.problems, *sizes.problems],
        models=[model.describe(defaults) for model in models],
        default_model=default.id if default else None,
    )


def _side_range(sizes: SizeTable, side: Callable[[SizeOption], int]) -> IntRange:
    """Any side in the protocol's range where sizes are free; else those of the options."""
    square = sizes.options.get("1:1")
    default = side(square) if square is not None else STANDARD_SIZES["1:1"][0]
    if sizes.custom_sizes:
        return IntRange(min=IMAGE_SIDE_MIN, max=IMAGE_SIDE_MAX, default=default)
    sides = [side(option) for option in sizes.options.values()] or [default]
    return IntRange(min=min(sides), max=max(sides), default=default)
