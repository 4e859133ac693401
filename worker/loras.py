"""LoRA, the part every backend shares: the LoRAs a model can apply, and a request's
`loras` checked against them before the job is queued (-32001 where its backend applies
none, -32602 naming `loras.N.name` for one it cannot, saying which family that one is
for). A backend finds its LoRAs and applies the chosen ones; nothing here knows how.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import FieldError, InvalidParamsData, UnsupportedFeatureData
from protocol.models import LoraInfo, LoraRequest, ModelFamily
from worker.errors import InvalidParams, UnsupportedFeature

FAMILY_TITLES: dict[str, str] = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD 3"}


@dataclass(frozen=True)
class Lora:
    """A LoRA file, as its backend found it."""

    name: str
    """What a request's `loras[].name` says for it."""
    path: Path
    family: ModelFamily | None
    width: int | None
    """What it fits, with its family: for a UNet's LoRA the width of the text its
    cross-attention reads (768 SD 1.x, 1024 SD 2.x, 2048 SDXL); for SD 3's transformer its
    own width (1536 for SD 3 and 3.5 Medium, 2432 for SD 3.5 Large)."""

    def describe(self) -> LoraInfo:
        return LoraInfo(name=self.name, family=self.family, path=str(self.path))

    @property
    def made_for(self) -> str:
        if self.family == "sd3":
            return f"a LoRA for SD 3 transformers {self.width} wide"
        if self.family is not None:
            return f"a LoRA for {FAMILY_TITLES[self.family]}"
        return f"a LoRA for models that read text {self.width} wide"


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA of a request, checked: what the backend applies."""

    lora: Lora
    weight: float

    @property
    def path(self) -> Path:
        return self.lora.path

    def to_record(self) -> dict[str, Any]:
        """As the result's metadata and the PNG's record take it (wire names)."""
        return {"name": self.lora.name, "weight": self.weight, "path": str(self.lora.path)}


def choose_loras(
    asked: list[LoraRequest],
    label: str,
    fitting: tuple[Lora, ...],
    others: tuple[Lora, ...],
    problem: str,
) -> tuple[AppliedLora, ...]:
    """The LoRAs a request names, of those that fit the model `label`: -32001 when it
    can apply none (`problem` says why), -32602 naming `loras.N.name` for one it does not
    have (another family's, with which, or one not installed)."""
    if not asked:
        return ()
    if problem:
        raise UnsupportedFeature(
            f"Unsupported feature: loras: {label} cannot apply a LoRA: {problem}.",
            UnsupportedFeatureData(feature="loras", supported=[]),
        )
    by_name = {lora.name: lora for lora in fitting}
    elsewhere = {lora.name: lora for lora in others}
    chosen = []
    for index, request in enumerate(asked):
        lora = by_name.get(request.name)
        if lora is None:
            field = f"loras.{index}.name"
            offered = ", ".join(sorted(by_name)) or "none"
            other = elsewhere.get(request.name)
            why = (
                f"{request.name!r} is {other.made_for}, which {label} cannot apply"
                if other is not None
                else f"no LoRA named {request.name!r} is installed"
            )
            reason = (
                f"{why} (the LoRAs it can: {offered}; capabilities lists them under models[].loras)"
            )
            raise InvalidParams(
                f"Invalid params: {field}: {reason}.",
                InvalidParamsData(errors=[FieldError(field=field, message=reason)]),
            )
        chosen.append(AppliedLora(lora, request.weight))
    return tuple(chosen)
