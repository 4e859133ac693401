"""ControlNet, the part every backend shares: which ControlNets a model can use, and a
request's `controls` checked against them and prepared (each image read with every check
a reference gets, then framed to the size its ControlNet takes) before the job is queued.

A backend finds its ControlNets (Core ML: the bundle's `controlnet/` folder; diffusers:
ControlNet directories beside the models) and runs the prepared controls; nothing here
knows how.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.models import Control, ControlNetInfo

KINDS = (
    ("inpaint", ("inpaint",)),
    ("canny", ("canny",)),
    ("depth", ("depth",)),
    ("openpose", ("openpose", "pose")),
    ("scribble", ("scribble",)),
    ("lineart", ("lineart",)),
    ("softedge", ("softedge", "hed", "pidi")),
    ("normal", ("normal",)),
    ("segmentation", ("seg",)),
    ("mlsd", ("mlsd",)),
    ("tile", ("tile",)),
    ("shuffle", ("shuffle",)),
    ("instruct", ("ip2p", "instruct")),
    ("qrcode", ("qrcode", "qr_code", "qr-code")),
)
"""What a ControlNet reads, told from the words of its name as the published ones are
named (`control_v11f1p_sd15_depth`, `Canny-SE`, `controlnet-openpose-sdxl-1.0`)."""


def controlnet_kind(name: str) -> str | None:
    """The kind of a ControlNet from its name; None where the name does not say."""
    lowered = name.lower()
    return next((kind for kind, words in KINDS if any(w in lowered for w in words)), None)


@dataclass(frozen=True)
class ControlNet:
    """A ControlNet a model can use, as its backend found it."""

    name: str
    """What a request's `controls[].model` says for it."""
    path: Path
    input_size: tuple[int, int] | None = None
    """The image size it takes, where it takes one size only (Core ML's)."""

    @property
    def kind(self) -> str | None:
        return controlnet_kind(self.name)

    @property
    def inpaint(self) -> bool:
        return self.kind == "inpaint"

    def describe(self) -> ControlNetInfo:
        return ControlNetInfo(name=self.name, kind=self.kind, path=str(self.path))


@dataclass(frozen=True)
class PreparedControl:
    """A control of a request, checked and prepared: what the backend is given."""

    controlnet: ControlNet
    png: bytes
    """Its image: RGB, framed to the size its ControlNet takes (the job's, unless it
    takes one size only); RGBA for an inpaint control the worker made."""
    image_sha256: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def to_record(self) -> dict[str, Any]:
        """As the result's metadata and the PNG's record take it (wire names)."""
        return {
            "model": self.controlnet.name,
            "imageSha256": self.image_sha256,
            "weight": self.weight,
            "start": self.start,
            "end": self.end,
        }


def prepare_controls(
    controls: list[Control], nets: list[ControlNet], size: tuple[int, int]
) -> tuple[PreparedControl, ...]:
    """Each control's image read (every check a reference gets; -32602 naming
    `controls.N.image`) and framed as a reference is (cover, then center-crop) to the
    size its ControlNet takes: `size`, the job's, unless it takes one of its own."""
    if not controls:
        return ()
    from PIL import ImageOps

    from worker.reference import png_bytes, read_upright

    prepared = []
    for index, (control, net) in enumerate(zip(controls, nets, strict=True)):
        image, data = read_upright(control.image, f"controls.{index}.image")
        framed = ImageOps.fit(image, net.input_size or size, centering=(0.5, 0.5))
        prepared.append(
            PreparedControl(
                controlnet=net,
                png=png_bytes(framed),
                image_sha256=hashlib.sha256(data).hexdigest(),
                weight=control.weight,
                start=control.start,
                end=control.end,
            )
        )
    return tuple(prepared)
