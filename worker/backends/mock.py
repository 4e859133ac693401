"""The test-only procedural backend: deterministic PNGs, no diffusion.

Same result shape and progress phases as Core ML, so hosts and people can try the whole
protocol on any machine. Never a fallback: it runs only when configured. Its plug-in
face and its backend share this file; Pillow loads only when a job is rendered.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from protocol.errors import TimedOutData
from protocol.models import COMPUTE_UNITS, SCHEDULERS, BackendStatus, ComputeUnits
from worker.backends.base import JobPlan, Rendered
from worker.checks import Check
from worker.controls import ControlNet
from worker.errors import TimedOut
from worker.settings import EnvironmentReader, Settings
from worker.sizes import STANDARD_SIZES, SizeOption, SizeTable

if TYPE_CHECKING:
    from worker.backends.base import Backend
    from worker.host import HostPlatform
    from worker.images import RenderedImage
    from worker.live import LiveSamplers
    from worker.models import Model
    from worker.parameters import JobParameters
    from worker.progress import ProgressReporter

BACKEND_ID = "mock"
MODEL_ID = "local/macos-procedural-v1"
MOCK_CONTROLNET = "procedural-canny"
"""Its one ControlNet: each control's image, blended into the pattern by its weight."""
IMAGE_SIZE = 512
ENV_STEP_MS = "SYSTEMSCULPT_LOCAL_MOCK_STEP_MS"
DEFAULT_STEP_MS = 2
"""How long each of its steps takes: a few milliseconds, so tests and demos are quick."""
READY = "Test-only procedural backend: deterministic patterns, not diffusion."


@dataclass(frozen=True)
class MockSettings:
    step_ms: int = DEFAULT_STEP_MS
    """A slower pace shows a host's progress, cancel and timeout handling."""

    @classmethod
    def read(cls, reader: EnvironmentReader, home: Path) -> MockSettings:
        return cls(step_ms=reader.number(ENV_STEP_MS, int, 0, 60_000, DEFAULT_STEP_MS))


class MockPlugin:
    id = BACKEND_ID
    names = ("mock", "procedural")
    schedulers = SCHEDULERS
    compute_units: tuple[ComputeUnits, ...] = COMPUTE_UNITS
    test_only = True
    installer = None

    def read_settings(self, reader: EnvironmentReader, home: Path) -> MockSettings:
        return MockSettings.read(reader, home)

    def describe(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> BackendStatus:
        return BackendStatus(
            id=BACKEND_ID,
            available=True,
            reason=READY,
            missing=[],
            install_hint="",
            model_id=MODEL_ID,
            sample_binary=None,
            resource_path=None,
            test_only=True,
        )

    def sizes(self, settings: Settings) -> SizeTable:
        """Every standard size, and any other: it draws whatever it is asked for."""
        return SizeTable(
            {
                ratio: SizeOption(ratio, width, height, Path(), "default", True)
                for ratio, (width, height) in STANDARD_SIZES.items()
            },
            custom_sizes=True,
        )

    def models(
        self, settings: Settings, host: HostPlatform, running: Backend | None
    ) -> list[Model]:
        from worker.models import Model

        return [
            Model(
                id=f"{BACKEND_ID}/procedural",
                label="procedural test patterns",
                backend=BACKEND_ID,
                family=None,
                path=Path(),
                sizes=self.sizes(settings),
                schedulers=SCHEDULERS,
                native=STANDARD_SIZES["1:1"],
                compute_units=COMPUTE_UNITS,
                inpainting="native",  # its pattern, laid in where the mask repaints
                controlnets=(ControlNet(MOCK_CONTROLNET, Path("procedural")),),
                control_weights=True,  # each control's image, blended in by its weight
                preview_decoders=("latent", "vae"),  # the same pattern either way
                loras_problem="the mock backend draws patterns; it has no LoRA",
                notes=("test-only: deterministic patterns, not diffusion",),
                result_id=MODEL_ID,
            )
        ]

    def image_to_image_problem(self, settings: Settings) -> str:
        return ""  # it blends any reference into its pattern

    def doctor_checks(self, settings: Settings, host: HostPlatform, load: bool) -> list[Check]:
        return [Check("backend", "ok", f"{READY} Nothing to install.")]

    def settings_summary(self, settings: Settings) -> str:
        return f"{settings.section(MockSettings).step_ms} ms a step"

    def load(self, settings: Settings, host: HostPlatform, live: LiveSamplers) -> Backend:
        return MockBackend(settings.section(MockSettings))


PLUGIN = MockPlugin()


class MockBackend:
    """Procedural images with Core ML's progress phases, for tests and trying the protocol."""

    def __init__(self, settings: MockSettings | None = None) -> None:
        self._step_seconds = (settings or MockSettings()).step_ms / 1000

    async def aclose(self) -> None:
        """Nothing is kept between jobs."""

    def check(self, parameters: JobParameters) -> JobPlan:
        """The procedural patterns can render any job that passed validation; it counts
        its steps as Core ML's sampler does (PNDM runs one more, a reference cuts them)."""
        sampling = parameters.sampling
        steps = sampling.step_count + (1 if sampling.scheduler == "pndm" else 0)
        if parameters.strength is not None and parameters.strength < 1:
            steps -= max(sampling.step_count - int(sampling.step_count * parameters.strength), 0)
        names = (_file_name(parameters, index) for index in range(parameters.count))
        return JobPlan(total_steps=steps, file_names=tuple(names))

    async def render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered:
        timeout_ms = parameters.sampling.timeout_ms
        with anyio.move_on_after(timeout_ms / 1000) as deadline:
            rendered = await self._render(parameters, progress)
        if deadline.cancelled_caught:
            raise TimedOut(
                f"The procedural backend did not finish within {timeout_ms} ms and was "
                "stopped. Lower stepCount or count, or raise timeoutMs.",
                TimedOutData(timeout_ms=timeout_ms),
            )
        return rendered

    async def _render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered:
        from worker.images import RenderedImage

        started = time.monotonic()
        progress.loading("Preparing the procedural test backend")
        total = progress.total_steps
        size = (parameters.width, parameters.height)
        patterns: dict[int, bytes] = {}

        def pattern(index: int) -> bytes:
            """Each image's pattern is drawn once, for its previews and its result alike."""
            if index not in patterns:
                patterns[index] = procedural_png(parameters.prompt, parameters.run_id, index, size)
            return patterns[index]

        for step in range(1, total + 1):
            await anyio.sleep(self._step_seconds)  # a checkpoint: cancel lands here
            progress.sampling(step, total, 1 / self._step_seconds if self._step_seconds else None)
            if parameters.preview_every and (step - 1) % parameters.preview_every == 0:
                for index in range(parameters.count):
                    await _preview(parameters, progress, step, index, pattern(index))
        images: list[RenderedImage] = []
        for index in range(parameters.count):
            png = pattern(index)
            if parameters.reference is not None and parameters.strength is not None:
                png = blend_with_reference(png, parameters.reference.png, parameters.strength)
            for control in parameters.controls:  # how much of it shows: weight and span
                share = min(1.0, control.weight * (control.end - control.start) / 2)
                png = blend_with_reference(control.png, png, share)
            name = _file_name(parameters, index)
            images.append(RenderedImage(name, index, png, *size))
            progress.saving(f"Saved {name}")
            await anyio.lowlevel.checkpoint()
        return Rendered(
            images=images,
            warnings=[],
            model_id=MODEL_ID,
            backend=BACKEND_ID,
            sample_binary=None,
            resource_path=None,
            duration_ms=round((time.monotonic() - started) * 1000),
            width=size[0],
            height=size[1],
            compute_units=parameters.sampling.compute_units,  # as Core ML's stand-in
        )


async def _preview(
    parameters: JobParameters, progress: ProgressReporter, step: int, index: int, png: bytes
) -> None:
    """The pattern at `step`, as a thumbnail: the preview Core ML would send."""
    from worker.previews import make_thumbnail

    name = f"procedural.{index}.{parameters.seed}.{step - 1}.preview.png"
    thumbnail = await anyio.to_thread.run_sync(
        make_thumbnail, png, parameters.preview_dir, name, parameters.source_overlay
    )
    if thumbnail is not None:
        progress.preview(step, index, thumbnail)


def _file_name(parameters: JobParameters, index: int) -> str:
    return f"procedural.{index}.{parameters.seed}.final.png"


def blend_with_reference(png: bytes, reference: bytes, strength: float) -> bytes:
    """Image-to-image, procedurally: the pattern over the reference, as much of it as the
    strength lets the result move away from the reference."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as pattern, Image.open(io.BytesIO(reference)) as base:
        mixed = Image.blend(base.convert("RGB"), pattern.convert("RGB"), strength)
    buffer = io.BytesIO()
    mixed.save(buffer, format="PNG")
    return buffer.getvalue()


def procedural_png(
    prompt: str, run_id: str, index: int, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
) -> bytes:
    """The same (prompt, runId, index, size) always gives the same bytes."""
    from PIL import Image, ImageDraw  # only when a request needs it: keeps start-up fast

    digest = hashlib.sha256(f"{prompt}\x00{run_id}\x00{index}".encode()).digest()
    top, bottom = digest[0:3], digest[3:6]
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.composite(
        Image.new("RGB", size, tuple(bottom)),
        Image.new("RGB", size, tuple(top)),
        gradient,
    )
    draw = ImageDraw.Draw(image)
    for ring in range(6):
        offset = 6 + ring * 3
        x, y = digest[offset] * 2, digest[offset + 1] * 2
        radius = 24 + digest[offset + 2] % 96
        colour = (digest[(offset + 3) % 32], digest[(offset + 5) % 32], digest[(offset + 7) % 32])
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=6)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
