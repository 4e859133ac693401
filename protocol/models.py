"""Params, results and notifications of every method of the worker."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from protocol.base import WireModel
from protocol.errors import ConfigInvalidData
from protocol.version import REQUEST_SCHEMA_TAG, RESPONSE_SCHEMA_TAG

Scheduler = Literal[
    "pndm",
    "dpmpp",
    "euler",
    "euler_a",
    "ddim",
    "dpmpp_karras",
    "euler_karras",
    "euler_a_trailing",
    "lcm",
    "flow_match",
]
ComputeUnits = Literal["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]
SCHEDULERS: tuple[Scheduler, ...] = get_args(Scheduler)
"""Every scheduler some backend serves; `capabilities.features.schedulers` lists the
configured backend's (Core ML: pndm and dpmpp), and each model's `schedulers` its own.
The Karras ones space their sigmas as Karras et al.; `euler_a_trailing` and `lcm` are for
few-step models (SDXL-Turbo, LCM); `flow_match` is SD3's, the only one it takes."""
ModelFamily = Literal["sd1", "sd2", "sdxl", "sd3"]
FAMILY_NAMES: dict[ModelFamily, str] = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
    "sd3": "Stable Diffusion 3",
}
COMPUTE_UNITS: tuple[ComputeUnits, ...] = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")

MAX_IMAGE_COUNT = 8
STEP_COUNT_MIN, STEP_COUNT_MAX = 1, 80
GUIDANCE_SCALE_MIN, GUIDANCE_SCALE_MAX = 0.0, 30.0
REQUEST_TIMEOUT_MS_MIN, TIMEOUT_MS_MAX = 1_000, 1_800_000
SEED_MAX = 2**32 - 1
MAX_INPUT_IMAGES = 16
PREVIEW_MAX_SIDE = 256
"""The longest side of a preview thumbnail."""
MAX_REFERENCE_BYTES = 50 * 1024 * 1024
"""A larger reference file (or base64) is refused before it is read whole."""
MAX_REFERENCE_PIXELS = 50_000_000
"""A reference with more pixels is refused from its header, before it is decoded."""
SIZE_MULTIPLE = 8
"""Image sides are multiples of this (a latent is 8x8 pixels)."""
IMAGE_SIDE_MIN, IMAGE_SIDE_MAX = 64, 2048
"""The widest range of `width` and `height` a request may name; `limits` narrows it."""
MAX_BATCH_MEMBERS = 64
"""Requests in one JSON-RPC batch; a larger batch is refused whole, -32600."""
MAX_PROMPT_CHARS = 20_000
"""Far beyond the text encoder's 77 tokens, well within one command-line argument."""

JsonRpcId = StrictInt | StrictStr | Annotated[StrictFloat, AllowInfNan(False)] | None
"""Any JSON-RPC id the worker accepts, as the host sent it (null and fractions included)."""


def _json_number(value: Any) -> Any:
    """JSON's types, not Python's coercions: true, false and "3" are not numbers."""
    if isinstance(value, bool | str | bytes):
        raise ValueError(f"expected a JSON number, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return "a string" if isinstance(value, str | bytes) else type(value).__name__


JsonInt = Annotated[int, BeforeValidator(_json_number)]
"""A JSON integer; `3.0` counts (JSON Schema's `integer` is any number with no fraction)."""
JsonFloat = Annotated[float, BeforeValidator(_json_number)]
"""A JSON number, integers included."""
# Bounds go before the validator, so that the schema states them as minimum and maximum.
StepCount = Annotated[
    int, Field(ge=STEP_COUNT_MIN, le=STEP_COUNT_MAX), BeforeValidator(_json_number)
]
GuidanceScale = Annotated[
    float, Field(ge=GUIDANCE_SCALE_MIN, le=GUIDANCE_SCALE_MAX), BeforeValidator(_json_number)
]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX), BeforeValidator(_json_number)]
ImageSide = Annotated[
    int,
    Field(ge=IMAGE_SIDE_MIN, le=IMAGE_SIDE_MAX, multiple_of=SIZE_MULTIPLE),
    BeforeValidator(_json_number),
]
TimeoutMs = Annotated[
    int, Field(ge=REQUEST_TIMEOUT_MS_MIN, le=TIMEOUT_MS_MAX), BeforeValidator(_json_number)
]


# --- capabilities ------------------------------------------------------------


class CapabilitiesParams(WireModel):
    """`capabilities` takes no params (an empty object, or none at all)."""


class WorkerInfo(WireModel):
    name: str
    version: str


class PlatformInfo(WireModel):
    os: str = Field(description="`platform.system()`: Darwin, Linux, ...")
    os_version: str = Field(description="macOS product version on a Mac, else the kernel release")
    machine: str = Field(description="arm64, x86_64, ...")
    python: str


class ModelHostStatus(WireModel):
    """The diffusers backend's model host, as it is now."""

    loaded: bool = Field(description="A host is running with the model loaded")
    device: str = Field(description="Where it runs (cpu, cuda, mps), or as configured")
    dtype: str
    dtype_reason: str = Field(
        default="",
        description="Why it runs in that precision: `auto`'s choice for the device (bfloat16 "
        "on a CPU that does it in hardware), or the variable that set it",
    )
    last_load_ms: int | None = Field(
        description="How long the last load took, until the model could run a step (its "
        "weights read); None: none yet"
    )
    idle_unload_ms: int = Field(description="Unloaded after this long without a job (0: never)")
    pid: int | None
    last_load_error: str = Field(
        default="",
        description="Why the last load failed (`backend.installHint` has the fix); empty "
        "once a load succeeds. The next generate tries again",
    )


class BackendStatus(WireModel):
    """Whether `generate` can run now, and if not, what to do about it."""

    id: str = Field(
        description="`coreml_diffusion`, `diffusers`, `mock`, or the unusable value configured"
    )
    available: bool
    reason: str = Field(description="Why it is (not) available, in words a person can act on")
    missing: list[str] = Field(description="Files or directories that are absent")
    install_hint: str = Field(description="What to run to fix it; empty when available")
    model_id: str
    sample_binary: str | None
    resource_path: str | None
    test_only: bool
    model_host: ModelHostStatus | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="With the diffusers backend: the process that keeps the model loaded",
    )


class IntRange(WireModel):
    min: int
    max: int
    default: int


class FloatRange(WireModel):
    min: float
    max: float
    default: float


class Limits(WireModel):
    """The range of every expert control, for an inspector to draw."""

    max_image_count: int
    max_reference_bytes: int = Field(description="Of a reference image's file or base64 bytes")
    max_reference_pixels: int = Field(description="Of a reference image, checked before decoding")
    step_count: IntRange
    guidance_scale: FloatRange
    timeout_ms: IntRange
    strength: FloatRange = Field(
        description="With a reference; min is exclusive (a strength of 0 runs no step)"
    )
    preview_every: IntRange
    width: IntRange = Field(
        description="Of an image; with `features.customSizes` any multiple of 8 in range, "
        "else only the sizes of `features.aspectRatioBundles`. Default: the 1:1 size"
    )
    height: IntRange
    max_queue: int
    max_concurrency: int
    max_batch_members: int = Field(
        description="Requests in one JSON-RPC batch; a larger batch is answered with one -32600"
    )


Quality = Literal["fast", "balanced", "high"]
QUALITY_ALIASES: dict[str, Quality] = {
    "fast": "fast",
    "draft": "fast",
    "balanced": "balanced",
    "high": "high",
    "highdetail": "high",
    "detail": "high",
}
"""The spellings Studio's later provider accepted (case, spaces, `-` and `_` ignored)."""


class QualityPreset(WireModel):
    """What a quality preset sets, unless the request or the environment sets it."""

    name: Quality
    step_count: int
    guidance_scale: float


QUALITY_PRESETS: dict[Quality, QualityPreset] = {
    "fast": QualityPreset(name="fast", step_count=14, guidance_scale=7.0),
    "balanced": QualityPreset(name="balanced", step_count=20, guidance_scale=7.5),
    "high": QualityPreset(name="high", step_count=32, guidance_scale=8.0),
}


def _spelled(aliases: dict[str, str], what: str) -> Any:
    """A validator that takes any of `aliases`' spellings (case, spaces, `-` and `_`
    ignored, as Studio's later provider did) to its canonical name; anything else is
    refused naming the valid ones, never guessed."""
    canonical = list(dict.fromkeys(aliases.values()))
    others = [alias for alias in aliases if alias not in canonical]

    def validate(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        key = "".join(value.lower().split()).replace("-", "").replace("_", "")
        if key not in aliases:
            raise ValueError(
                f"is not a {what}; use one of {', '.join(canonical)} "
                f"(also accepted: {', '.join(others)})"
            )
        return aliases[key]

    return BeforeValidator(validate)


class AspectRatioBundle(WireModel):
    """The model bundle that makes one aspect ratio (Core ML fixes the size per bundle)."""

    ratio: str
    width: int
    height: int
    resource_path: str
    present: bool
    problem: str = Field(description="Why it cannot be used though present; empty if it can")


class Features(WireModel):
    text_to_image: bool
    image_to_image: bool
    image_to_image_reason: str = Field(
        description="Why image-to-image is not available, and the fix; empty when it is"
    )
    reference_influences: dict[str, float] = Field(
        description="The strength each `referenceInfluence` stands for"
    )
    aspect_ratios: list[str] = Field(description="The ratios `generate` can make now")
    aspect_ratio_bundles: list[AspectRatioBundle] = Field(
        description="Every ratio configured, with its size and whether its bundle is there"
    )
    custom_sizes: bool = Field(
        description="`width` and `height` may be any multiple of 8 within `limits` (the "
        "diffusers backend); false: only the sizes the bundles make (Core ML)"
    )
    negative_prompt: bool
    schedulers: list[Scheduler]
    compute_units: list[ComputeUnits]
    progress: bool
    cancel: bool
    previews: bool = Field(description="`previewEvery` is served")
    preview_max_side: int = Field(description="The longest side of a preview thumbnail")
    quality_presets: list[QualityPreset] = Field(
        description="What each `quality` sets; an explicit field or a pinned variable wins"
    )


class SamplingParameters(WireModel):
    """The knobs of a job that the environment sets and a request may override."""

    step_count: int
    guidance_scale: float
    scheduler: Scheduler
    compute_units: ComputeUnits
    disable_safety: bool
    reduce_memory: bool
    timeout_ms: int


class Defaults(SamplingParameters):
    """The effective settings a `generate` uses when it does not override them."""


ParameterSource = Literal["request", "environment", "preset", "default", "derived", "model"]
"""Where an effective value came from, highest precedence first: the request's own field,
a SYSTEMSCULPT_LOCAL_* variable, the request's `quality` preset, the worker's default;
or derived from other values (the seed); or the model's own (a scheduler its family
needs, where the default is one it does not take)."""


class ModelSize(WireModel):
    ratio: str
    width: int
    height: int


InpaintingRoute = Literal["native", "controlnet", "none"]
PreviewDecoder = Literal["latent", "taesd", "vae"]


def _vae_only() -> list[PreviewDecoder]:
    return ["vae"]


class ControlNetInfo(WireModel):
    """A ControlNet a model can use: what `generate.controls[].model` names."""

    name: str = Field(description="What `controls[].model` says for it")
    kind: str | None = Field(
        description="What it reads from its image (canny, depth, openpose, scribble, "
        "inpaint, ...) where its name tells; None where it does not"
    )
    path: str = Field(description="Where it is")


class LoraInfo(WireModel):
    """A LoRA a model can apply: what `generate.loras[].name` names."""

    name: str = Field(
        description="What `loras[].name` says for it: its file's path in the "
        "LoRA folder, without `.safetensors`"
    )
    family: ModelFamily | None = Field(
        description="The family it was trained for, told from its weights' shapes; None "
        "where they match no published family (it still fits models of its own width)"
    )
    path: str = Field(description="Its file")


class ModelInfo(WireModel):
    """One model `generate` can be asked for by its `id` (`model`): what Studio's model
    menu shows, and the controls the inspector draws for it."""

    id: str = Field(description="Stable across restarts: `coreml/<name>`, `diffusers/<name>`")
    label: str
    backend: str = Field(description="The backend that runs it")
    family: ModelFamily | None = Field(description="None where its files do not say")
    variant: Literal["base", "refiner", "inpainting"] = Field(
        default="base",
        description="A refiner makes images only from a reference, an inpainting model only "
        "with a mask or outpaint",
    )
    path: str = Field(description="Where it is: a bundle or diffusers folder, a checkpoint")
    native_width: int
    native_height: int
    sizes: list[ModelSize] = Field(description="The sizes it makes, by aspect ratio")
    custom_sizes: bool = Field(description="Any other width and height within `limits` too")
    schedulers: list[Scheduler]
    guidance_scale: FloatRange
    step_count: IntRange
    image_to_image: bool
    image_to_image_reason: str = Field(description="Why not, and the fix; empty when it can")
    inpainting: InpaintingRoute = Field(
        default="none",
        description="How it repaints a masked region (`mask`, `outpaint`): `native` (an "
        "inpainting pipeline), `controlnet` (a ControlNet inpaint model), `none`",
    )
    inpainting_reason: str = Field(
        default="", description="Why it cannot, and the fix; empty when it can"
    )
    preview_decoders: list[PreviewDecoder] = Field(
        default_factory=_vae_only,
        description="How it can make previews (`generate.previewDecoder`), its default "
        "first: `latent` costs a few milliseconds each, `taesd` a tiny autoencoder's pass "
        "(where one is installed), `vae` a full decode",
    )
    preview_note: str = Field(default="", description="What a preview costs with it")
    controlnets: list[ControlNetInfo] = Field(
        default_factory=list,
        description="The ControlNets it can use (`generate.controls`), found beside it",
    )
    controls_reason: str = Field(
        default="",
        description="Why it cannot use any ControlNet, and the fix; empty when it can",
    )
    control_weights: bool = Field(
        default=False,
        description="Its controls take a `weight`, `start` and `end` other than 1, 0 and 1 "
        "(Core ML's sampler sums its ControlNets at full weight over the whole run)",
    )
    loras: list[LoraInfo] = Field(
        default_factory=list,
        description="The LoRAs it can apply (`generate.loras`), from the LoRA folder",
    )
    loras_reason: str = Field(
        default="", description="Why it can apply no LoRA, and the fix; empty when it can"
    )
    prompt_weights: bool = Field(
        default=False,
        description="It weighs `(word:1.2)`, `(word)` and `[word]` in a prompt; where not, "
        "the syntax is removed from the text with a warning",
    )
    clip_skip: bool = Field(
        default=False, description="It takes `generate.clipSkip` above 1 (SD 1.x/2.x)"
    )
    compute_units: list[ComputeUnits] = Field(description="Core ML's; empty elsewhere")
    attention: str | None = Field(
        default=None,
        description="Core ML: `split_einsum` (made for the Neural Engine) or `original` "
        "(for the GPU); None elsewhere",
    )
    usable: bool = Field(description="`generate` can run it now")
    problem: str = Field(description="Why it cannot; empty when it can")
    fix: str = Field(description="What makes it usable; empty when it is")
    default: bool = Field(description="What a `generate` without `model` runs")
    loaded: bool = Field(default=False, description="Held in memory now (diffusers' host)")
    notes: list[str] = Field(
        default_factory=list, description="What a person choosing it should know"
    )


class CapabilitiesResult(WireModel):
    protocol_version: str
    worker: WorkerInfo
    platform: PlatformInfo
    backend: BackendStatus
    limits: Limits
    features: Features
    defaults: Defaults
    config_errors: list[ConfigInvalidData]
    models: list[ModelInfo] = Field(
        default_factory=list,
        description="Every model this worker can run, or could once fixed; `generate`'s "
        "`model` names one by its id",
    )
    default_model: str | None = Field(
        default=None, description="The id a `generate` without `model` runs"
    )


# --- generate ----------------------------------------------------------------


REFERENCE_MIME_TYPES = ("image/png", "image/jpeg", "image/webp")
"""What a reference image may be; its content must be of the type it declares."""
MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
"""Spellings browsers and tools use for the same types."""


def _mime_type(value: Any) -> Any:
    """`IMAGE/JPG; q=1` as `image/jpeg`: case and parameters ignored, aliases resolved."""
    if not isinstance(value, str):
        return value
    plain = value.split(";", 1)[0].strip().lower()
    return MIME_ALIASES.get(plain, plain)


def _no_nul_in_path(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("contains a NUL character, which no path can hold")
    return value


class InputImage(WireModel):
    """A reference image for image-to-image: a file on local disk (Studio's staged file,
    `stagedPath`, or `path`), or its bytes (`base64`). Exactly one of the three."""

    hash: str | None = Field(default=None, description="Studio's hash of the file")
    mime_type: Annotated[str, BeforeValidator(_mime_type)] = Field(
        description="image/png, image/jpeg or image/webp (any case; image/jpg is image/jpeg)"
    )
    size_bytes: JsonInt | None = Field(default=None, description="Studio's size of the file")
    staged_path: Annotated[str | None, AfterValidator(_no_nul_in_path)] = Field(
        default=None, description="An absolute path"
    )
    path: Annotated[str | None, AfterValidator(_no_nul_in_path)] = Field(
        default=None, description="The same as stagedPath"
    )
    base64: str | None = Field(
        default=None,
        description="The file's bytes, base64-encoded; line breaks, a `data:` URL prefix and "
        "the URL-safe alphabet are accepted",
    )

    @model_validator(mode="after")
    def _one_source(self) -> InputImage:
        given = [name for name in ("stagedPath", "path", "base64") if self._has(name)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of stagedPath, path or base64 (got "
                + (", ".join(given) or "none")
                + ")"
            )
        return self

    def _has(self, wire_name: str) -> bool:
        value = {"stagedPath": self.staged_path, "path": self.path, "base64": self.base64}
        return value[wire_name] is not None

    @property
    def file_path(self) -> str | None:
        return self.staged_path if self.staged_path is not None else self.path


MASK_BLUR_MAX = 256
OUTPAINT_SIDE_MAX = IMAGE_SIDE_MAX
OutpaintSide = Annotated[int, Field(ge=0, le=OUTPAINT_SIDE_MAX), BeforeValidator(_json_number)]


class Outpaint(WireModel):
    """How far to extend the reference's canvas: pixels per side, or to an aspect ratio
    (the shorter way, evenly on both sides). The new area is generated, the reference kept."""

    left: OutpaintSide = 0
    right: OutpaintSide = 0
    top: OutpaintSide = 0
    bottom: OutpaintSide = 0
    aspect_ratio: str | None = Field(
        default=None, description='"W:H", instead of the sides: extend to this ratio'
    )

    @model_validator(mode="after")
    def _one_form(self) -> Outpaint:
        sides = self.left + self.right + self.top + self.bottom
        if self.aspect_ratio is not None:
            if sides:
                raise ValueError("give the sides or aspectRatio, not both")
            parts = self.aspect_ratio.split(":")
            if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
                raise ValueError(f'aspectRatio {self.aspect_ratio!r} is not "W:H" (as "16:9")')
        elif not sides:
            raise ValueError(
                "extends nothing; give left, right, top or bottom (pixels) or aspectRatio"
            )
        return self


ReferenceInfluence = Literal["subtle", "balanced", "strong"]
REFERENCE_INFLUENCE_STRENGTHS: dict[ReferenceInfluence, float] = {
    "subtle": 0.75,
    "balanced": 0.55,
    "strong": 0.35,
}
"""How far the result may move from the reference (the sampler's strength) per preset:
a subtle influence lets it move far."""
_INFLUENCE_ALIASES: dict[str, ReferenceInfluence] = {
    "subtle": "subtle",
    "low": "subtle",
    "balanced": "balanced",
    "strong": "strong",
    "high": "strong",
}


Strength = Annotated[float, Field(gt=0.0, le=1.0), BeforeValidator(_json_number)]


_FROM_SETTINGS = "Absent: the worker's default (see `capabilities.defaults`)"


QualitySpelling = Annotated[Quality, _spelled(QUALITY_ALIASES, "quality preset")]
InfluenceSpelling = Annotated[
    ReferenceInfluence, _spelled(_INFLUENCE_ALIASES, "reference influence")
]


CONTROLS_MAX = 4
CONTROL_WEIGHT_MAX = 2.0
ControlFraction = Annotated[float, Field(ge=0.0, le=1.0), BeforeValidator(_json_number)]


class Control(WireModel):
    """One ControlNet a `generate` uses: which, the image it reads structure from (edges,
    depth, pose, ...), how strongly, and over which part of the run."""

    model: str = Field(
        min_length=1,
        max_length=1000,
        description="A ControlNet of the chosen model (`models[].controlnets[].name`)",
    )
    image: InputImage = Field(description="Its conditioning image, shaped like inputImages'")
    weight: Annotated[
        float, Field(ge=0.0, le=CONTROL_WEIGHT_MAX), BeforeValidator(_json_number)
    ] = Field(default=1.0, description="How strongly it steers, 0 (not at all) to 2")
    start: ControlFraction = Field(
        default=0.0, description="The fraction of the run at which it starts acting"
    )
    end: ControlFraction = Field(
        default=1.0, description="The fraction of the run at which it stops acting"
    )

    @model_validator(mode="after")
    def _start_before_end(self) -> Control:
        if self.start >= self.end:
            raise ValueError(
                f"start ({self.start:g}) must come before end ({self.end:g}): it acts from "
                "start to end, fractions of the run"
            )
        return self


LORAS_MAX = 8
LORA_WEIGHT_LIMIT = 4.0
CLIP_SKIP_MAX = 12


class LoraRequest(WireModel):
    """A LoRA a `generate` applies, and how strongly."""

    name: str = Field(
        min_length=1,
        max_length=1000,
        description="A LoRA of the chosen model (`models[].loras[].name`)",
    )
    weight: Annotated[
        float,
        Field(ge=-LORA_WEIGHT_LIMIT, le=LORA_WEIGHT_LIMIT),
        BeforeValidator(_json_number),
    ] = Field(
        default=1.0,
        description="How strongly it applies: 1 as trained, 0 not at all (the base model's "
        "image), negative to steer away from it; -4 to 4",
    )


class LocalOptions(WireModel):
    """Where Studio's later provider took the two presets from (it won over the top level)."""

    quality: QualitySpelling | None = None
    reference_influence: InfluenceSpelling | None = None


class GenerateParams(WireModel):
    """One image node's request. Overrides are optional; the environment gives the rest."""

    schema_: Literal["studio.local-image-generation.request.v1"] | None = Field(
        default=None, alias="schema", description=f"Accepted when it is `{REQUEST_SCHEMA_TAG}`"
    )
    model: str | None = Field(
        default=None,
        max_length=1000,
        description="One of `capabilities.models` by its id; absent: `defaultModel`",
    )
    prompt: str = Field(max_length=MAX_PROMPT_CHARS, description="Trimmed; must not be empty")
    count: JsonInt = Field(default=1, ge=1, le=MAX_IMAGE_COUNT, description="Images to make")
    run_id: str = Field(default="", description="The Studio run; part of the derived seed")
    aspect_ratio: str = Field(
        default="1:1", description="One of `capabilities.features.aspectRatios`"
    )
    width: ImageSide | None = Field(
        default=None,
        description="With height, instead of aspectRatio: the image size (see "
        "`capabilities.limits.width` and `features.customSizes`)",
    )
    height: ImageSide | None = Field(default=None, description="With width")
    input_images: list[InputImage] = Field(
        default_factory=list,
        max_length=MAX_INPUT_IMAGES,
        description="Reference images: the first is used (image-to-image), the others are "
        "ignored with a warning",
    )
    mask: InputImage | None = Field(
        default=None,
        description="With a reference: inpaint. White repaints, black keeps, grey partly; "
        "scaled to the reference. Outside it the result is the reference's pixels exactly, "
        "and its previews show the reference",
    )
    mask_blur: Annotated[int, Field(ge=0, le=MASK_BLUR_MAX), BeforeValidator(_json_number)] = Field(
        default=0, description="Feathers the mask's edge by this radius in pixels"
    )
    outpaint: Outpaint | None = Field(
        default=None,
        description="With a reference: extend its canvas and generate the new area; the "
        "result's size is the reference's plus the sides",
    )
    controls: list[Control] = Field(
        default_factory=list,
        max_length=CONTROLS_MAX,
        description="ControlNets that steer the image's structure, each from its own image",
    )
    loras: list[LoraRequest] = Field(
        default_factory=list,
        max_length=LORAS_MAX,
        description="LoRAs to apply, each with its weight (diffusers; see `models[].loras`)",
    )
    clip_skip: (
        Annotated[int, Field(ge=1, le=CLIP_SKIP_MAX), BeforeValidator(_json_number)] | None
    ) = Field(
        default=None,
        description="As AUTOMATIC1111 counts it: 1 reads the text encoder's last layer (the "
        "default), 2 the one before it; above 1 where `models[].clipSkip` says so",
    )
    strength: Strength | None = Field(
        default=None,
        description="With a reference: how far the result may move from it, 0 < s <= 1; "
        "wins over referenceInfluence (with a mask or outpaint: 1 unless given)",
    )
    reference_influence: InfluenceSpelling | None = Field(
        default=None,
        description="With a reference: subtle (strength 0.75), balanced (0.55, the "
        "default) or strong (0.35)",
    )
    negative_prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="Trimmed; what to steer away from"
    )
    step_count: StepCount | None = Field(default=None, description=_FROM_SETTINGS)
    guidance_scale: GuidanceScale | None = Field(default=None, description=_FROM_SETTINGS)
    quality: QualitySpelling | None = Field(
        default=None,
        description="A preset of stepCount and guidanceScale (`capabilities.features."
        "qualityPresets`); the request's own fields and pinned variables win over it",
    )
    quality_preset: QualitySpelling | None = Field(
        default=None, description="The same as quality, as Studio's later provider spelled it"
    )
    local_options: LocalOptions | None = Field(
        default=None,
        description="{quality, referenceInfluence}, as Studio's later provider took them; "
        "they win over the top-level fields",
    )
    scheduler: Scheduler | None = Field(default=None, description=_FROM_SETTINGS)
    compute_units: ComputeUnits | None = Field(default=None, description=_FROM_SETTINGS)
    seed: Seed | None = Field(default=None, description="Derived from prompt and runId when absent")
    timeout_ms: TimeoutMs | None = Field(
        default=None,
        description=_FROM_SETTINGS + "; counted from the sampler's start (Core ML), or from "
        "when the loaded model takes the job (diffusers: a model's load has a limit of its "
        "own)",
    )
    preview_every: Annotated[int, Field(ge=0, le=STEP_COUNT_MAX), BeforeValidator(_json_number)] = (
        Field(
            default=0,
            description="Send a `preview` of the images every N steps (0: none); what each "
            "costs is the model's `previewDecoders` to say",
        )
    )
    preview_decoder: PreviewDecoder | None = Field(
        default=None,
        description="How previews are made: `latent` (from the latents, a few milliseconds), "
        "`taesd` (a tiny autoencoder, near the final image's look) or `vae` (a full decode, "
        "as the final image); absent: the model's first `previewDecoders`",
    )
    output: Literal["base64", "path"] = Field(
        default="base64", description="Images inline as base64, or written to `outputDir`"
    )
    output_dir: Annotated[str | None, AfterValidator(_no_nul_in_path)] = Field(
        default=None, description="With output `path`: an existing directory the host owns"
    )

    @field_validator("prompt", "run_id", "negative_prompt")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        return value.strip()

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("the prompt is empty after trimming; describe the image to generate")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("contains a NUL character, which no command line can carry")
        return value

    @property
    def chosen_quality(self) -> Quality | None:
        """localOptions, then quality, then qualityPreset: the later provider's order."""
        options = self.local_options or LocalOptions()
        return options.quality or self.quality or self.quality_preset

    @property
    def chosen_influence(self) -> ReferenceInfluence | None:
        options = self.local_options or LocalOptions()
        return options.reference_influence or self.reference_influence

    @model_validator(mode="after")
    def _size_is_whole(self) -> GenerateParams:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together; give both or neither")
        if self.width is not None and "aspect_ratio" in self.model_fields_set:
            raise ValueError(
                "give aspectRatio or width and height, not both (the size fixes the ratio)"
            )
        return self

    @model_validator(mode="after")
    def _editing_has_a_reference(self) -> GenerateParams:
        edits = [name for name, v in (("mask", self.mask), ("outpaint", self.outpaint)) if v]
        if edits and not self.input_images:
            raise ValueError(
                f"{' and '.join(edits)} edit a reference image: give it in inputImages"
            )
        if len(edits) == 2:
            raise ValueError("give mask or outpaint, not both (outpaint makes its own mask)")
        if self.outpaint is not None and (
            self.width is not None or "aspect_ratio" in self.model_fields_set
        ):
            raise ValueError(
                "outpaint sets the size (the reference's plus the sides); drop width, height "
                "and aspectRatio, or use outpaint.aspectRatio"
            )
        return self

    @model_validator(mode="after")
    def _each_lora_once(self) -> GenerateParams:
        names = [lora.name for lora in self.loras]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"loras names {', '.join(map(repr, twice))} more than once; give each LoRA "
                "once, with the weight it should have"
            )
        return self

    @model_validator(mode="after")
    def _output_dir_goes_with_path(self) -> GenerateParams:
        if self.output == "path" and not self.output_dir:
            raise ValueError('output "path" needs outputDir, an existing directory')
        if self.output == "base64" and self.output_dir is not None:
            raise ValueError('outputDir goes with output "path"; drop it or set output "path"')
        return self


class GeneratedImage(WireModel):
    mime_type: Literal["image/png"] = "image/png"
    width: int
    height: int
    file_name: str
    seed: int
    index: int
    base64: str | None = Field(
        default=None, exclude_if=lambda v: v is None, description="With output `base64`"
    )
    path: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="Absolute path, with output `path`",
    )


class ControlRecord(WireModel):
    """A control as a result records it."""

    model: str
    image_sha256: str = Field(description="SHA-256 of its image's bytes")
    weight: float
    start: float
    end: float


class LoraRecord(WireModel):
    """A LoRA as a result records it."""

    name: str
    weight: float
    path: str = Field(description="Its file")


class GenerationMetadata(SamplingParameters):
    """How the images were made: the effective parameters and where each came from."""

    model: str = Field(description="The id of the model that made the images")
    family: ModelFamily | None = Field(description="Its family, where known")
    compute_units: ComputeUnits | None = Field(  # type: ignore[assignment]
        description="Core ML's compute units; null where the backend has none (diffusers: "
        "`device` and `dtype` say where it ran)"
    )
    device: str | None = Field(
        default=None, description="Where the model ran (diffusers: cpu, cuda, mps); else null"
    )
    dtype: str | None = Field(
        default=None, description="The precision it ran in (diffusers); else null"
    )
    dtype_reason: str | None = Field(
        default=None, description="Why it ran in that precision (diffusers); else null"
    )
    backend: str
    sample_binary: str | None
    resource_path: str | None
    seed: int
    quality_preset: Quality | None = Field(description="The request's `quality`, if any")
    used_reference_image: bool = Field(description="Image-to-image from the first inputImage")
    strength: float | None = Field(description="With a reference: the sampler's strength")
    reference_sha256: str | None = Field(description="SHA-256 of the reference's bytes")
    mask_sha256: str | None = Field(
        default=None, description="With a mask: SHA-256 of the mask's bytes"
    )
    mask_blur: int | None = Field(default=None, description="With a mask: its feather radius")
    outpaint: dict[str, int] | None = Field(
        default=None,
        description="With outpaint: the pixels added on each side (left, right, top, bottom)",
    )
    controls: list[ControlRecord] = Field(
        default_factory=list, description="The ControlNets it used, as asked"
    )
    loras: list[LoraRecord] = Field(default_factory=list, description="The LoRAs it applied")
    clip_skip: int | None = Field(
        default=None,
        description="The text encoder layer it read, counted from the end (1: the last); "
        "null where the model has no such choice",
    )
    sources: dict[str, ParameterSource] = Field(
        description="For each effective parameter (by its field name), where it came from"
    )
    requested_aspect_ratio: str
    actual_aspect_ratio: str
    width: int
    height: int
    resource_path_source: str = Field(
        description="Where the bundle's path came from: environment, manifest or default"
    )
    manifest_path: str | None = Field(description="The model manifest read, if any")
    duration_ms: int = Field(description="Wall time of the sampler process")
    total_ms: int = Field(description="Wall time of the whole request, queue excluded")


class GenerateResult(WireModel):
    schema_: Literal["studio.local-image-generation.response.v1"] = Field(
        default=RESPONSE_SCHEMA_TAG, alias="schema"
    )
    model_id: str
    images: list[GeneratedImage]
    metadata: GenerationMetadata
    warnings: list[str]


# --- cancel ------------------------------------------------------------------


class CancelParams(WireModel):
    """Exactly one of `requestId` (a `generate`'s JSON-RPC id, whatever its type, null
    included) or `runId` (every job of a Studio run)."""

    request_id: JsonRpcId = None
    run_id: StrictStr | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CancelParams:
        if self.names_request == (self.run_id is not None):
            raise ValueError("give exactly one of requestId or runId")
        return self

    @property
    def names_request(self) -> bool:
        """True when `requestId` was given (an explicit null names a request with id null)."""
        return "request_id" in self.model_fields_set


class CancelRequestParams(WireModel):
    """`$/cancelRequest` notification, as the Language Server Protocol sends it."""

    id: JsonRpcId


class CancelResult(WireModel):
    cancelled: list[JsonRpcId] = Field(description="Ids of the generate requests cancelled")


# --- progress (notification) ------------------------------------------------

ProgressPhase = Literal["queued", "loading", "sampling", "saving"]


class ProgressParams(WireModel):
    """Sent by the worker while a `generate` waits or runs; never after its response."""

    request_id: JsonRpcId
    run_id: str
    phase: ProgressPhase
    step: int = Field(description="Denoising steps completed (1-based); 0 before sampling")
    total_steps: int = Field(description="The sampler's own step total; 0 while unknown")
    fraction: float = Field(ge=0.0, le=1.0)
    steps_per_second: float | None
    eta_ms: int | None
    message: str
    elapsed_ms: int = Field(
        default=0,
        description="Since the worker took the request. While a step or a load runs long, "
        "the last notification is sent again every few seconds with this grown (and the "
        "message saying for how long): slow, not stuck",
    )
    queue_position: int | None = Field(
        default=None, exclude_if=lambda v: v is None, description="With phase `queued`, 1-based"
    )


class PreviewParams(WireModel):
    """Sent by the worker when the sampler saved intermediate images (`previewEvery`); a
    thumbnail per image, never after the response."""

    request_id: JsonRpcId
    run_id: str
    step: int = Field(description="Steps completed when the image was taken (1-based)")
    total_steps: int
    index: int = Field(description="Which image of the request")
    width: int
    height: int
    mime_type: Literal["image/png"] = "image/png"
    base64: str | None = Field(
        default=None, exclude_if=lambda v: v is None, description="With output `base64`"
    )
    path: str | None = Field(
        default=None, exclude_if=lambda v: v is None, description="With output `path`"
    )


METHOD_MODELS: dict[str, tuple[type[WireModel], type[WireModel] | None]] = {
    "capabilities": (CapabilitiesParams, CapabilitiesResult),
    "generate": (GenerateParams, GenerateResult),
    "cancel": (CancelParams, CancelResult),
    "$/cancelRequest": (CancelRequestParams, None),
    "progress": (ProgressParams, None),
    "preview": (PreviewParams, None),
}
"""Every method and notification with its params and result model (None: a notification)."""
