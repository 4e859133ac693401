"""The test-only procedural backend: deterministic 512x512 PNGs, no diffusion.

Same result shape and progress phases as Core ML, so hosts and people can try the whole
protocol on any machine. Never a fallback: it runs only when configured.
"""

from __future__ import annotations

import hashlib
import io
import time

import anyio
import anyio.to_thread

from worker.backends import MOCK_BACKEND_ID as BACKEND_ID
from worker.backends import MOCK_MODEL_ID as MODEL_ID
from worker.backends.base import Rendered
from worker.images import RenderedImage
from worker.parameters import JobParameters
from worker.previews import make_thumbnail
from worker.progress import ProgressReporter

IMAGE_SIZE = 512
STEP_SECONDS = 0.002


class MockBackend:
    """Procedural images with Core ML's progress phases, for tests and trying the protocol."""

    async def aclose(self) -> None:
        """Nothing is kept between jobs."""

    def check(self, parameters: JobParameters) -> None:
        """The procedural patterns can render any job that passed validation."""

    async def render(self, parameters: JobParameters, progress: ProgressReporter) -> Rendered:
        started = time.monotonic()
        progress.loading("Preparing the procedural test backend")
        total = parameters.total_steps
        size = (parameters.width, parameters.height)
        patterns: dict[int, bytes] = {}

        def pattern(index: int) -> bytes:
            """Each image's pattern is drawn once, for its previews and its result alike."""
            if index not in patterns:
                patterns[index] = procedural_png(parameters.prompt, parameters.run_id, index, size)
            return patterns[index]

        for step in range(1, total + 1):
            await anyio.sleep(STEP_SECONDS)  # a checkpoint: cancel lands here
            progress.sampling(step, total, 1 / STEP_SECONDS)
            if parameters.preview_every and (step - 1) % parameters.preview_every == 0:
                for index in range(parameters.count):
                    await self._preview(parameters, progress, step, index, pattern(index))
        images = []
        for index in range(parameters.count):
            png = pattern(index)
            if parameters.reference is not None and parameters.strength is not None:
                png = blend_with_reference(png, parameters.reference.png, parameters.strength)
            name = f"procedural.{index}.{parameters.seed}.final.png"
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
        )

    async def _preview(
        self,
        parameters: JobParameters,
        progress: ProgressReporter,
        step: int,
        index: int,
        png: bytes,
    ) -> None:
        """The pattern at `step`, as a thumbnail: the preview Core ML would send."""
        name = f"procedural.{index}.{parameters.seed}.{step - 1}.preview.png"
        thumbnail = await anyio.to_thread.run_sync(
            make_thumbnail, png, parameters.preview_dir, name
        )
        if thumbnail is not None:
            progress.preview(step, parameters.total_steps, index, thumbnail)


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
