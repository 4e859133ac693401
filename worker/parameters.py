"""The one record of what a job will do, resolved once from the request and the settings.

Everything downstream reads this record: the backend (the sampler's command line, the
model host's job), the result's metadata, the PNG's text chunks, the benchmarks. A new
sampling parameter is a field of `SamplingParameters` (and its variable in
`SAMPLING_VARIABLES`); nothing here copies fields one by one. How many steps a job runs
is the backend's to say (`Backend.check`), not this record's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.models import (
    QUALITY_PRESETS,
    REFERENCE_INFLUENCE_STRENGTHS,
    GenerateParams,
    ParameterSource,
    PreviewDecoder,
    Quality,
    ReferenceInfluence,
    SamplingParameters,
)
from worker.file_names import ImageNames
from worker.prompt_weights import is_weighted, plain
from worker.seed import derive_seed
from worker.settings import Settings
from worker.sizes import STANDARD_SIZES, SizeOption, ratio_of

if TYPE_CHECKING:  # preparing one needs Pillow, loaded only when a request has one
    from worker.controls import PreparedControl
    from worker.loras import AppliedLora
    from worker.masks import Edit, SourceOverlay
    from worker.models import Model
    from worker.reference import Reference

DEFAULT_REFERENCE_INFLUENCE: ReferenceInfluence = "balanced"
EDIT_STRENGTH = 1.0
"""A masked edit's strength unless the request gives one: the masked area is made anew
(an outpaint's new area holds nothing to keep)."""


@dataclass(frozen=True)
class JobParameters:
    """Every value a job uses, resolved, with where each came from."""

    prompt: str
    negative_prompt: str
    run_id: str
    count: int
    seed: int
    quality: Quality | None
    """The request's preset, if it named one."""
    sampling: SamplingParameters
    sources: Mapping[str, ParameterSource]
    """By wire name (`stepCount`, `seed`, ...)."""
    requested_aspect_ratio: str
    width: int
    height: int
    """The size the job makes, and a reference is prepared to."""
    resource_path: Path | None
    """The model files that make that size (Core ML's bundle for the ratio); None: the
    backend's own."""
    resource_path_source: str
    manifest_path: Path | None
    kill_grace_ms: int
    preview_every: int = 0
    """Intermediate images every N steps (0: none), sent as `preview` notifications."""
    preview_decoder: PreviewDecoder = "vae"
    """How they are made: from the latents, or a full decode."""
    preview_dir: Path | None = None
    """Where preview thumbnails are written (output `path`); None: sent inline."""
    reference: Reference | None = None
    """The prepared reference image (image-to-image), checked before the job is queued."""
    strength: float | None = None
    """How far the result may move from the reference; set exactly when there is one."""
    model: Model | None = None
    """The model it runs (None: the backend's configured one, for callers that pick none)."""
    edit: Edit | None = None
    """A masked edit (inpaint, outpaint) of the reference: its mask, at the job's size."""
    controls: tuple[PreparedControl, ...] = ()
    """The ControlNets it runs with, their images prepared."""
    loras: tuple[AppliedLora, ...] = ()
    """The LoRAs it applies, with their weights."""
    clip_skip: int | None = None
    """The text encoder layer it reads, from the end (1: the last); None where the model
    has no such choice."""
    prompt_syntax_removed: bool = False
    """Its prompts carried weights the model cannot weigh: `prompt` and `negative_prompt`
    are the words without them."""

    @cached_property
    def source_overlay(self) -> SourceOverlay | None:
        """For a masked edit, what lays its source over its result and previews (one for
        the job: the source is read once); None otherwise."""
        if self.edit is None or self.reference is None:
            return None
        return self.edit.overlay(self.reference.png)

    @property
    def names(self) -> ImageNames:
        """How its images are named (every backend names them the same way): after the
        prompt's words, without weight syntax (where the model weighs them, `prompt`
        still has it; where it cannot, it was removed already)."""
        words = self.prompt if self.prompt_syntax_removed else plain(self.prompt)
        return ImageNames(words, self.count, self.seed, self.strength)

    def to_record(self) -> dict[str, Any]:
        """The effective parameters as JSON, for the PNG's `studio-imagegen` chunk."""
        return {
            "prompt": self.prompt,
            "negativePrompt": self.negative_prompt,
            "runId": self.run_id,
            "count": self.count,
            "seed": self.seed,
            "quality": self.quality,
            **self.sampling.to_wire(),
            "strength": self.strength,
            "referenceSha256": self.reference.sha256 if self.reference else None,
            **(self.edit.to_record() if self.edit else {}),
            "controls": [control.to_record() for control in self.controls],
            "loras": [lora.to_record() for lora in self.loras],
            "clipSkip": self.clip_skip,
            "sources": dict(self.sources),
        }


def resolve_parameters(
    params: GenerateParams,
    settings: Settings,
    reference: Reference | None = None,
    size: SizeOption | None = None,
    manifest_path: Path | None = None,
    model: Model | None = None,
    edit: Edit | None = None,
    controls: tuple[PreparedControl, ...] = (),
    loras: tuple[AppliedLora, ...] = (),
) -> JobParameters:
    """Each value from the first that sets it: the request's own field, a pinned variable,
    the request's preset (quality, reference influence), the default."""
    fields = SamplingParameters.model_fields
    requested = {
        name: getattr(params, name)
        for name in fields
        if getattr(params, name, None) is not None  # disable_safety is environment-only
    }
    quality = params.chosen_quality
    preset = (
        QUALITY_PRESETS[quality].model_dump(by_alias=False, exclude={"name"}) if quality else {}
    )
    from_preset = {
        name: value
        for name, value in preset.items()
        if name not in requested and name not in settings.pinned
    }
    sampling = SamplingParameters.model_validate(
        {**settings.sampling_defaults().model_dump(by_alias=False), **from_preset, **requested},
        by_name=True,
    )
    sources: dict[str, ParameterSource] = {
        _wire_name(name): "request"
        if name in requested
        else "environment"
        if name in settings.pinned
        else "preset"
        if name in from_preset
        else "default"
        for name in fields
    }
    sources["seed"] = "request" if params.seed is not None else "derived"
    if (
        model is not None
        and sampling.scheduler not in model.schedulers
        and sources["scheduler"] in ("default", "preset")
    ):  # its family takes other schedulers only (SD3: its own)
        sampling = sampling.model_copy(update={"scheduler": model.schedulers[0]})
        sources["scheduler"] = "model"
    if (
        model is not None
        and model.preferred_compute_units is not None
        and sources["computeUnits"] == "default"
    ):  # a bundle's attention decides where it runs best
        sampling = sampling.model_copy(update={"compute_units": model.preferred_compute_units})
        sources["computeUnits"] = "model"
    strength = None
    if reference is not None:
        influence = params.chosen_influence or DEFAULT_REFERENCE_INFLUENCE
        strength = (
            params.strength
            if params.strength is not None
            else EDIT_STRENGTH
            if edit is not None and params.chosen_influence is None
            else REFERENCE_INFLUENCE_STRENGTHS[influence]
        )
        sources["strength"] = (
            "request"
            if params.strength is not None
            else "preset"
            if params.chosen_influence
            else "default"
        )
    prompt, negative_prompt = params.prompt, params.negative_prompt
    weighted = is_weighted(prompt) or is_weighted(negative_prompt)
    strip = weighted and model is not None and not model.prompt_weights
    if strip:  # never passed on as literal brackets
        prompt, negative_prompt = plain(prompt).strip() or prompt, plain(negative_prompt).strip()
    return JobParameters(
        prompt=prompt,
        negative_prompt=negative_prompt,
        run_id=params.run_id,
        count=params.count,
        seed=params.seed if params.seed is not None else derive_seed(params.prompt, params.run_id),
        quality=quality,
        sampling=sampling,
        sources=sources,
        requested_aspect_ratio=requested_ratio(params),
        width=size.width if size else STANDARD_SIZES["1:1"][0],
        height=size.height if size else STANDARD_SIZES["1:1"][1],
        resource_path=size.resource_path if size else None,
        resource_path_source=size.source if size else "environment",
        manifest_path=manifest_path,
        kill_grace_ms=settings.kill_grace_ms,
        preview_every=params.preview_every,
        preview_decoder=model.preview_decoder(params.preview_decoder) if model else "vae",
        preview_dir=Path(params.output_dir)
        if params.output == "path" and params.output_dir
        else None,
        reference=reference,
        strength=strength,
        model=model,
        edit=edit,
        controls=controls,
        loras=loras,
        clip_skip=(params.clip_skip or 1) if model is not None and model.clip_skip else None,
        prompt_syntax_removed=strip,
    )


def requested_ratio(params: GenerateParams) -> str:
    """The ratio asked for: `aspectRatio`, or that of `width` and `height`."""
    if params.width is not None and params.height is not None:
        return ratio_of(params.width, params.height)
    return params.aspect_ratio.strip() or "1:1"


def _wire_name(name: str) -> str:
    alias = SamplingParameters.model_fields[name].alias
    return alias or name
