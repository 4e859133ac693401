"""What the worker and its model host say to each other: one JSON object per line.

The worker writes to the host's stdin; the host answers on the descriptor that was its
stdout (its own stdout is pointed at stderr at start, so a library that prints cannot
break the framing). Both sides import this module; it needs nothing beyond the standard
library.

Worker to host: `generate` (a `HostJob`), `cancel` (the running job), and end of input
(exit). Host to worker, as events:

- `loading` {message}, then `loaded` {device, dtype, loadMs, safetyChecker} or
  `loadFailed` {reason, fix}, once per host;
- per job: `accepted` {totalSteps}, `step` {step, totalSteps, index}, `preview` {step,
  totalSteps, index, path}, `image` {index, seed, path, withheld}, then exactly one of
  `done`, `cancelled`, `failed` {reason};
- `unloaded` {idleMs}: the host exits after waiting that long for a job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

GENERATE = "generate"
CANCEL = "cancel"

LOADING = "loading"
LOADED = "loaded"
LOAD_FAILED = "loadFailed"
ACCEPTED = "accepted"
STEP = "step"
PREVIEW = "preview"
IMAGE = "image"
DONE = "done"
CANCELLED = "cancelled"
FAILED = "failed"
UNLOADED = "unloaded"
JOB_ENDINGS = frozenset({DONE, CANCELLED, FAILED})

MAX_LINE_BYTES = 1024 * 1024
SEED_MODULUS = 2**32


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a job: its own generator's, so it can be made again
    alone (a request with this seed and count 1); within the seeds a request may name."""
    return (seed + index) % SEED_MODULUS


@dataclass(frozen=True)
class HostJob:
    """One job as the host runs it: every value resolved by the worker."""

    prompt: str
    negative_prompt: str
    seed: int
    """Image `i` is drawn from its own generator seeded `seed + i`."""
    count: int
    step_count: int
    guidance_scale: float
    scheduler: str
    width: int
    height: int
    output_dir: str
    """Where the host writes the images and previews (the worker's job directory)."""
    reduce_memory: bool = False
    strength: float | None = None
    reference_path: str | None = None
    preview_every: int = 0

    def to_message(self) -> dict[str, Any]:
        return {"type": GENERATE, "job": asdict(self)}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> HostJob:
        return cls(**message["job"])


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One message; ValueError when the line is not a JSON object with a `type`."""
    message = json.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("not a message: a JSON object with a string `type`")
    return message
