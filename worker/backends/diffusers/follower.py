"""One job's events from the model host, from its acceptance to its end: steps become
progress, previews become thumbnails, images are checked and named."""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import SamplerFailedData
from protocol.models import PREVIEW_MAX_SIDE
from worker.backends.diffusers.host import messages
from worker.backends.diffusers.host.messages import image_seed
from worker.backends.diffusers.host_process import ModelHostProcess
from worker.errors import SamplerFailed
from worker.images import RenderedImage, check_png
from worker.parameters import JobParameters
from worker.previews import publish_thumbnail
from worker.progress import ProgressReporter

logger = logging.getLogger(__name__)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class JobFollower:
    """Follows one job on a host that has accepted it."""

    parameters: JobParameters
    progress: ProgressReporter
    images: list[RenderedImage] = field(default_factory=list)
    withheld: list[int] = field(default_factory=list)
    ended: bool = False
    """The host has said the job is over (done or failed): nothing to stop."""

    async def follow(self, host: ModelHostProcess) -> None:
        """The job's events until its end; -32003 when the pipeline failed."""
        started = time.monotonic()
        while True:
            event = await host.receive()
            if isinstance(event, messages.Step):
                rate = event.step / max(time.monotonic() - started, 1e-6)
                self.progress.sampling(event.step, event.total_steps, rate)
            elif isinstance(event, messages.Preview):
                await self._publish(event)
            elif isinstance(event, messages.Image):
                self._take(event)
            elif isinstance(event, messages.Done):
                self.ended = True
                host.trim_log()
                for image in self.images:
                    self.progress.saving(f"Saved {image.file_name}")
                return
            elif isinstance(event, messages.Failed):
                self.ended = True
                raise SamplerFailed(
                    f"The diffusers pipeline failed: {event.reason}{_memory_hint(event.reason)}",
                    SamplerFailedData(exit_code=None, signal=None, stderr=event.reason),
                )

    def _take(self, event: messages.Image) -> None:
        if event.withheld:
            self.withheld.append(event.index)
            return
        parameters = self.parameters
        png, width, height = check_png(Path(event.path), (parameters.width, parameters.height))
        name = image_name(parameters, event.index)
        self.images.append(RenderedImage(name, event.index, png, width, height, seed=event.seed))

    async def _publish(self, event: messages.Preview) -> None:
        """A `preview` of the thumbnail the host made at this step, named as Core ML names
        its intermediate images; one that is not a PNG of a preview's size is skipped."""
        parameters = self.parameters
        seed = image_seed(parameters.seed, event.index)
        try:
            png = base64.b64decode(event.png, validate=True)
        except ValueError:
            png = b""
        if not png.startswith(PNG_SIGNATURE) or max(event.width, event.height) > PREVIEW_MAX_SIDE:
            logger.warning("a preview from the model host was skipped: not a thumbnail PNG")
            return
        await publish_thumbnail(
            png,
            (event.width, event.height),
            parameters.names.preview(event.index, event.step - 1, seed),
            parameters.preview_dir,
            self.progress,
            (event.step, event.index),
            parameters.source_overlay,
        )


def image_name(parameters: JobParameters, index: int) -> str:
    """The name of image `index`, with the image's own seed."""
    return parameters.names.delivered(index, image_seed(parameters.seed, index))


def _memory_hint(reason: str) -> str:
    if "out of memory" in reason.lower() or "MemoryError" in reason:
        return (
            "; memory ran out: lower count or the image size, set "
            "SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY=1, or use float16"
        )
    return ""
