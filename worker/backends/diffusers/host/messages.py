"""What the worker and its model host say to each other: one JSON object per line, each
a typed message with a `type`, decoded in one place for each direction.

The worker writes to the host's stdin; the host answers on the descriptor that was its
stdout (its own stdout is pointed at stderr at start, so a library that prints cannot
break the framing). Both sides import this module; it needs pydantic and nothing of the
worker.

Worker to host (`Request`): `generate` (a `HostJob`), `cancel` (the running job), and
end of input (exit). Host to worker (`Event`):

- `loading`, then `loaded` or `loadFailed`, once per host;
- per job: `accepted`, `step`s, `preview`s, `image`s, then exactly one of `done`,
  `cancelled`, `failed`;
- `unloaded`: the host exits after waiting `idleMs` for a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

MAX_LINE_BYTES = 1024 * 1024
SEED_MODULUS = 2**32


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a job: its own generator's, so it can be made again
    alone (a request with this seed and count 1); within the seeds a request may name."""
    return (seed + index) % SEED_MODULUS


class Message(BaseModel):
    """camelCase on the line, as on the worker's own wire; unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, frozen=True, extra="forbid"
    )


# --- the job -----------------------------------------------------------------


class HostSampling(Message):
    """The sampling parameters the host uses, read from the job record's by name."""

    model_config = ConfigDict(from_attributes=True)

    step_count: int
    guidance_scale: float
    scheduler: str
    reduce_memory: bool


class HostControl(Message):
    """A ControlNet a job runs with: where it is, its image, how strongly, when."""

    path: str
    image_path: str
    weight: float
    start: float
    end: float


class HostLora(Message):
    """A LoRA a job applies: its file, and how strongly."""

    model_config = ConfigDict(from_attributes=True)

    path: Path
    weight: float


class HostJob(Message):
    """One job as the host runs it: the fields of the worker's job record (`JobParameters`)
    that rendering needs, taken from it by name, and where its files go."""

    model_config = ConfigDict(from_attributes=True)

    prompt: str
    negative_prompt: str
    seed: int
    """Image `i` is drawn from its own generator seeded `seed + i`."""
    count: int
    width: int
    height: int
    strength: float | None
    preview_every: int
    preview_decoder: str = "vae"
    """`latent`: previews from the latents through the family's factors; `vae`: decoded."""
    tiny_autoencoder_path: str | None = None
    """With `taesd` previews: the tiny autoencoder they decode with."""
    preview_side: int = 256
    """The longest side of a preview thumbnail."""
    sampling: HostSampling
    output_dir: str = ""
    """Where the host writes the images and previews (the worker's job directory)."""
    reference_path: str | None = None
    mask_path: str | None = None
    """With a reference: inpaint where this greyscale image is white (the worker's mask)."""
    controlnets: list[HostControl] = []
    """The ControlNets it runs with (none: the plain pipelines)."""
    loras: list[HostLora] = []
    """The LoRAs it applies (none: the model as it was loaded)."""
    clip_skip: int | None = None
    """The text encoder layer its prompts are read from, from the end (1 or None: the
    last)."""


# --- worker to host ----------------------------------------------------------


class Generate(Message):
    type: Literal["generate"] = "generate"
    job: HostJob


class Cancel(Message):
    type: Literal["cancel"] = "cancel"


Request = Annotated[Generate | Cancel, Field(discriminator="type")]


# --- host to worker ----------------------------------------------------------


class Loading(Message):
    type: Literal["loading"] = "loading"
    message: str


class Loaded(Message):
    type: Literal["loaded"] = "loaded"
    device: str
    dtype: str
    load_ms: int
    """Until the model can run a step: its weights read, not only mapped."""
    safety_checker: bool
    dtype_reason: str = ""


class LoadFailed(Message):
    type: Literal["loadFailed"] = "loadFailed"
    reason: str
    fix: str


class Accepted(Message):
    type: Literal["accepted"] = "accepted"
    total_steps: int


class Step(Message):
    type: Literal["step"] = "step"
    step: int
    total_steps: int
    index: int


class Preview(Message):
    """A thumbnail of image `index` at `step`, made in the host's memory: a PNG, base64."""

    type: Literal["preview"] = "preview"
    step: int
    total_steps: int
    index: int
    png: str
    width: int
    height: int


class Image(Message):
    type: Literal["image"] = "image"
    index: int
    seed: int
    path: str
    withheld: bool


class Done(Message):
    type: Literal["done"] = "done"


class Cancelled(Message):
    type: Literal["cancelled"] = "cancelled"


class Failed(Message):
    type: Literal["failed"] = "failed"
    reason: str


class Unloaded(Message):
    type: Literal["unloaded"] = "unloaded"
    idle_ms: int


Event = Annotated[
    Loading
    | Loaded
    | LoadFailed
    | Accepted
    | Step
    | Preview
    | Image
    | Done
    | Cancelled
    | Failed
    | Unloaded,
    Field(discriminator="type"),
]
JobEnding = Done | Cancelled | Failed
"""The events that end a job: after one of them the host waits for the next."""

_REQUESTS: TypeAdapter[Request] = TypeAdapter(Request)
_EVENTS: TypeAdapter[Event] = TypeAdapter(Event)


def encode(message: Message) -> bytes:
    return message.model_dump_json(by_alias=True).encode() + b"\n"


def decode_request(line: bytes) -> Generate | Cancel:
    """The worker's message; ValueError when the line is not one."""
    return _REQUESTS.validate_json(line)


def decode_event(line: bytes) -> Event:
    """The host's message; ValueError when the line is not one."""
    return _EVENTS.validate_json(line)
