"""A model the worker can run (or could, once fixed): what the catalog lists and a job
runs with. Each backend's plug-in finds its own (`BackendPlugin.models`); the catalog
(`worker.catalog`) puts them together and picks one for a request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from protocol.errors import FieldError, InvalidParamsData, UnsupportedFeatureData
from protocol.models import (
    GUIDANCE_SCALE_MAX,
    GUIDANCE_SCALE_MIN,
    STEP_COUNT_MAX,
    STEP_COUNT_MIN,
    ComputeUnits,
    Control,
    Defaults,
    FloatRange,
    InpaintingRoute,
    IntRange,
    LoraRequest,
    ModelFamily,
    ModelInfo,
    ModelSize,
    PreviewDecoder,
    Scheduler,
)
from worker.controls import ControlNet
from worker.errors import InvalidParams, UnsupportedFeature
from worker.loras import FAMILY_TITLES, AppliedLora, Lora, choose_loras
from worker.sizes import SizeTable


@dataclass(frozen=True)
class Model:
    id: str
    """`<backend>/<name>`: stable across restarts (it comes from where the model is)."""
    label: str
    backend: str
    family: ModelFamily | None
    path: Path
    sizes: SizeTable
    schedulers: tuple[Scheduler, ...]
    native: tuple[int, int]
    variant: Literal["base", "refiner", "inpainting"] = "base"
    guidance_min: float = GUIDANCE_SCALE_MIN
    """Where a bundle always runs guidance, 1: below it the image would be unconditioned."""
    guidance_note: str = ""
    """Why guidance below `guidance_min` is refused (its backend refuses it)."""
    scheduler_note: str = ""
    """Why it takes `schedulers` only, where its backend can say more than the list."""
    step_min: int = STEP_COUNT_MIN
    image_to_image_problem: str = ""
    inpainting: InpaintingRoute = "none"
    """How it repaints a masked region: `native`, `controlnet`, or `none`."""
    inpainting_problem: str = ""
    """Why it cannot (where `inpainting` is `none`), and the fix."""
    preview_decoders: tuple[PreviewDecoder, ...] = ("vae",)
    """How it makes previews, its default first."""
    preview_note: str = ""
    """What a preview costs with it."""
    tiny_autoencoder: Path | None = None
    """The TAESD its `taesd` previews decode with, where one is installed."""
    controlnets: tuple[ControlNet, ...] = ()
    """The ControlNets it can use, found beside it."""
    controls_problem: str = ""
    """Why it can use no ControlNet, and the fix; empty when it can."""
    control_weights: bool = False
    """Its backend honours a control's weight, start and end."""
    applies_loras: bool = False
    """Its backend applies LoRAs at run time (diffusers)."""
    loras: tuple[Lora, ...] = ()
    """The LoRAs it can apply, found in the LoRA folder."""
    other_loras: tuple[Lora, ...] = ()
    """The LoRAs there that are for other models: named when a request asks for one."""
    loras_problem: str = "its backend cannot apply a LoRA at run time"
    """Why it can apply none, and the fix; empty when it can."""
    prompt_weights: bool = False
    """It weighs `(word:1.2)`; else the syntax is removed from its prompts."""
    clip_skip: bool = False
    """It reads an earlier layer of its text encoder when asked (`clipSkip`)."""
    compute_units: tuple[ComputeUnits, ...] = ()
    attention: str | None = None
    preferred_compute_units: ComputeUnits | None = None
    """Where it runs best when a request and the environment name none (a Core ML
    bundle of original attention: the GPU)."""
    problem: str = ""
    fix: str = ""
    default: bool = False
    notes: tuple[str, ...] = ()
    loaded: bool = False
    """Held in memory now (diffusers' model host)."""
    result_id: str = ""
    """How results name it (`modelId`, with the compute units or device after a colon):
    kept as the original provider named its one model, for graphs that read it."""
    details: object = field(default=None, compare=False)
    """What its backend keeps of it (a bundle's files, a diffusers location)."""

    @property
    def usable(self) -> bool:
        return not self.problem

    def check_editing(self, edits: list[str]) -> None:
        """-32001, before anything is read, for a masked edit (`mask`, `outpaint`) this
        model cannot make."""
        if edits and self.inpainting == "none":
            raise UnsupportedFeature(
                f"Unsupported feature: {edits[0]}: {self.label} cannot repaint a masked "
                f"region: {self.inpainting_problem or 'its backend has no inpainting'}.",
                UnsupportedFeatureData(feature=edits[0], supported=[]),
            )

    def controlnets_for(self, controls: list[Control]) -> list[ControlNet]:
        """The ControlNets a request's controls name, before any image is read: -32001
        where this model can use none or cannot weigh them, -32602 naming
        `controls.N.model` for one it does not have."""
        if not controls:
            return []
        if self.controls_problem:
            raise UnsupportedFeature(
                f"Unsupported feature: controls: {self.label} cannot use ControlNet: "
                f"{self.controls_problem}.",
                UnsupportedFeatureData(feature="controls", supported=[]),
            )
        by_name = {net.name: net for net in self.controlnets}
        chosen = []
        for index, control in enumerate(controls):
            net = by_name.get(control.model)
            if net is None:
                field = f"controls.{index}.model"
                reason = (
                    f"{control.model!r} is not a ControlNet {self.label} can use (it has: "
                    f"{', '.join(sorted(by_name))}; capabilities lists them under "
                    "models[].controlnets)"
                )
                raise InvalidParams(
                    f"Invalid params: {field}: {reason}.",
                    InvalidParamsData(errors=[FieldError(field=field, message=reason)]),
                )
            if not self.control_weights and (
                control.weight != 1 or control.start != 0 or control.end != 1
            ):
                field = "weight" if control.weight != 1 else "start" if control.start else "end"
                raise UnsupportedFeature(
                    f"Unsupported feature: controls.{index}.{field}: {self.label}'s backend "
                    "sums its ControlNets at full strength over the whole run; it has no "
                    "weight, start or end. Leave them out (1, 0 and 1), or use the diffusers "
                    "backend",
                    UnsupportedFeatureData(feature=f"controls.{field}", supported=[]),
                )
            chosen.append(net)
        return chosen

    def loras_for(self, asked: list[LoraRequest]) -> tuple[AppliedLora, ...]:
        """The LoRAs a request names, checked before anything runs: -32001 where its
        backend applies none, -32602 naming `loras.N.name` for one it cannot apply."""
        return choose_loras(
            asked,
            self.label,
            self.loras,
            self.other_loras,
            "" if self.applies_loras else self.loras_problem,
        )

    def check_clip_skip(self, clip_skip: int | None) -> None:
        """-32001 for a clip skip above 1 on a model that reads only its own layer."""
        if clip_skip is not None and clip_skip > 1 and not self.clip_skip:
            family = f"a {FAMILY_TITLES[self.family]} model" if self.family else "this model"
            raise UnsupportedFeature(
                f"Unsupported feature: clipSkip: {self.label} is {family}, whose text "
                "encoder layer is fixed here (SDXL and SD 3 already read the layer they were "
                "trained on; Core ML's text encoder is compiled to its last); clip skip is "
                "for SD 1.x/2.x on the diffusers backend. Leave clipSkip out, or set it to 1.",
                UnsupportedFeatureData(feature="clipSkip", supported=[]),
            )

    def preview_decoder(self, asked: PreviewDecoder | None) -> PreviewDecoder:
        """The decoder its previews use: the one asked, or its default; -32001 for one it
        does not have."""
        if asked is None:
            return self.preview_decoders[0]
        if asked not in self.preview_decoders:
            raise UnsupportedFeature(
                f"Unsupported feature: previewDecoder {asked!r}: {self.label} makes previews "
                f"with {', '.join(self.preview_decoders)} only"
                + (f" ({self.preview_note})" if self.preview_note else "")
                + "; leave previewDecoder out, or ask for one of those.",
                UnsupportedFeatureData(
                    feature="previewDecoder", supported=list(self.preview_decoders)
                ),
            )
        return asked

    def check_controls(self, scheduler: Scheduler, has_reference: bool, edit: bool) -> None:
        """-32001, before anything runs, for what this model does not take: a scheduler
        not its own, text-to-image on a refiner, no mask on an inpainting model."""
        if self.variant == "inpainting" and not edit:
            raise UnsupportedFeature(
                f"Unsupported feature: {'imageToImage' if has_reference else 'textToImage'}: "
                f"{self.label} is an inpainting model, which makes images only with a mask; "
                "give mask (or outpaint) with the reference, or choose a base model",
                UnsupportedFeatureData(feature="mask", supported=[]),
            )
        if scheduler not in self.schedulers:
            why = self.scheduler_note or f"{self.label} takes {', '.join(self.schedulers)}"
            raise UnsupportedFeature(
                f"Unsupported feature: scheduler {scheduler!r}: {why}.",
                UnsupportedFeatureData(feature="scheduler", supported=list(self.schedulers)),
            )
        if self.variant == "refiner" and not has_reference:
            raise UnsupportedFeature(
                f"Unsupported feature: text-to-image: {self.label} is an SDXL refiner, which "
                "makes images only from a reference; give inputImages, or choose a base model",
                UnsupportedFeatureData(feature="textToImage", supported=[]),
            )

    def describe(self, defaults: Defaults) -> ModelInfo:
        """As `capabilities.models` lists it; `defaults`: the worker's sampling defaults."""
        return ModelInfo(
            id=self.id,
            label=self.label,
            backend=self.backend,
            family=self.family,
            variant=self.variant,
            path=str(self.path),
            native_width=self.native[0],
            native_height=self.native[1],
            sizes=[
                ModelSize(ratio=option.ratio, width=option.width, height=option.height)
                for option in self.sizes.options.values()
                if option.usable
            ],
            custom_sizes=self.sizes.custom_sizes,
            schedulers=list(self.schedulers),
            guidance_scale=FloatRange(
                min=self.guidance_min,
                max=GUIDANCE_SCALE_MAX,
                default=max(defaults.guidance_scale, self.guidance_min),
            ),
            step_count=IntRange(
                min=self.step_min,
                max=STEP_COUNT_MAX,
                default=max(defaults.step_count, self.step_min),
            ),
            image_to_image=not self.image_to_image_problem,
            image_to_image_reason=self.image_to_image_problem,
            inpainting=self.inpainting,
            inpainting_reason=self.inpainting_problem,
            preview_decoders=list(self.preview_decoders),
            preview_note=self.preview_note,
            controlnets=[net.describe() for net in self.controlnets],
            controls_reason=self.controls_problem,
            control_weights=self.control_weights,
            loras=[lora.describe() for lora in self.loras],
            loras_reason=self.loras_problem,
            prompt_weights=self.prompt_weights,
            clip_skip=self.clip_skip,
            compute_units=list(self.compute_units),
            attention=self.attention,
            usable=self.usable,
            problem=self.problem,
            fix=self.fix,
            default=self.default,
            loaded=self.loaded,
            notes=list(self.notes),
        )
