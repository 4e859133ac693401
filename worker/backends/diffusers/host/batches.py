"""How many of a job's images the host makes in one pipeline call.

One call for all of them makes the UNet's matrix work larger and fewer: little gain on
a CPU (about 6 % for four at real scale here), much on a GPU. Each image keeps its own
generator (seed + index), so image i of a batch is the image made alone with that seed,
within what a batched kernel rounds differently (a level of 255 at most, seen). Where
the device has no room for them all, fewer at a time; with reduceMemory, one at a time.

Runs only in the host process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.backends.diffusers.host.families import TEXT_TO_IMAGE

BYTES_PER_PIXEL = 2400
"""What one more image costs in activations, per pixel, in float32 with guidance (about
0.6 GB for a 512x512 image of Stable Diffusion 1.5 on a CPU; half in 16-bit): a rough
measure, with room to spare below."""
SHARE_OF_FREE = 0.5
"""The share of the free memory a batch may take."""


def batch_size(
    count: int,
    size: tuple[int, int],
    dtype: str,
    reduce_memory: bool,
    free: int | None,
) -> int:
    """Images per call: all `count`, or as many as `free` bytes hold (None: unknown)."""
    if count <= 1 or reduce_memory:
        return 1
    if free is None:
        return count
    per_image = size[0] * size[1] * BYTES_PER_PIXEL * (1 if dtype == "float32" else 0.5)
    return max(1, min(count, int(free * SHARE_OF_FREE // per_image)))


def batches_work(family: str, mode: int) -> bool:
    """Whether a family's pipeline of `mode` (`families.TEXT_TO_IMAGE`, ...) makes
    several images in one call: SD3's image-to-image fails at its first attention with an
    empty batch (diffusers 0.42), so it makes them one at a time."""
    return not (family == "sd3" and mode != TEXT_TO_IMAGE)


def free_memory(torch: Any, device: str, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Free bytes where the device's tensors live: the GPU's own (CUDA), the system's
    available memory (CPU, read from Linux's meminfo); None where unknown (MPS)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device != "cpu":
        return None
    try:
        for line in meminfo.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the device running out of memory (CUDA's, MPS's or the CPU's)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )
