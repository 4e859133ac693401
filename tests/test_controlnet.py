"""ControlNet (`controls`), as a user sees it: which ControlNets each model lists, that a
control steers the image as its weight says, and that everything a backend cannot do is
refused with a named error before anything runs.

On the mock in-process (it blends each control's image in by its weight), on Core ML's
stand-in sampler (which takes `--controlnet` and `--controlnet-inputs` with the real
one's checks and crashes), and for real on the tiny diffusers model and two tiny
ControlNets over the worker's stdio.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from PIL import Image, ImageDraw

from fixtures.resources import make_resource_dir
from tests.diffusers_setup import DiffusersSetup
from tests.standin import StandIn, generate_once
from tests.test_masks import (
    differing,
    kept_in_preview,
    png_item,
    result_image,
    source_image,
    square_mask,
)
from tests.worker_clients import (
    LINUX,
    WorkerProcess,
    generate_with_previews,
    in_process_worker,
    start_worker_process,
)
from worker.backends.registry import read_settings

Message = dict[str, Any]
MOCK = {"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock", "SYSTEMSCULPT_LOCAL_MOCK_STEP_MS": "0"}
LONG_WAIT = 120.0
MOCK_NET = "procedural-canny"


def edges(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A conditioning image as an edge detector makes one: white lines on black."""
    image = Image.new("RGB", size, "black")
    width, height = size
    ImageDraw.Draw(image).ellipse(
        (width // 6, height // 6, width * 5 // 6, height * 5 // 6), outline="white", width=3
    )
    return image


def control(name: str, image: Image.Image | None = None, **extra: Any) -> Message:
    return {"model": name, "image": png_item(image or edges()), **extra}


def pixels(image: Message) -> bytes:
    return result_image(image).tobytes()


async def mock_call(method: str, params: Message | None = None) -> Message:
    async with in_process_worker(read_settings(MOCK), LINUX) as worker:
        return await worker.call(method, params)


# --- the wire, on the mock, in-process ---------------------------------------------------

BASE = {"prompt": "a fox", "seed": 5, "width": 64, "height": 64}


async def test_the_mock_lists_its_controlnet_and_takes_weights() -> None:
    models = (await mock_call("capabilities"))["result"]["models"]
    (model,) = [m for m in models if m["backend"] == "mock"]
    assert model["controlnets"] == [
        {"name": "procedural-canny", "kind": "canny", "path": "procedural"}
    ]
    assert model["controlWeights"] is True and model["controlsReason"] == ""


async def test_weight_zero_is_no_control_and_weight_one_is_not() -> None:
    plain = (await mock_call("generate", BASE))["result"]
    muted = await mock_call("generate", {**BASE, "controls": [control(MOCK_NET, weight=0)]})
    steered = await mock_call("generate", {**BASE, "controls": [control(MOCK_NET)]})
    assert pixels(muted["result"]["images"][0]) == pixels(plain["images"][0])
    assert pixels(steered["result"]["images"][0]) != pixels(plain["images"][0])
    (record,) = steered["result"]["metadata"]["controls"]
    sent = base64.b64decode(control("procedural-canny")["image"]["base64"])
    assert record["model"] == "procedural-canny" and (record["weight"], record["start"]) == (1, 0)
    assert len(record["imageSha256"]) == 64
    assert plain["metadata"]["controls"] == []
    with Image.open(io.BytesIO(base64.b64decode(steered["result"]["images"][0]["base64"]))) as png:
        effective = json.loads(png.info["studio-imagegen"])["effective"]
    assert effective["controls"] == [record]
    assert record["imageSha256"] == hashlib.sha256(sent).hexdigest()


@pytest.mark.parametrize(
    ("controls", "field", "said"),
    [
        ([control("depth-of-nothing")], "controls.0.model", "it has: procedural-canny"),
        ([control("procedural-canny", start=0.6, end=0.4)], "controls.0", "must come before end"),
        ([control("procedural-canny", weight=2.5)], "controls.0.weight", "less than or equal"),
        ([control("procedural-canny", weight="1")], "controls.0.weight", "JSON number"),
        ([control("procedural-canny")] * 5, "controls", "at most 4"),
    ],
)
async def test_bad_controls_are_refused_naming_the_field(
    controls: list[Message], field: str, said: str
) -> None:
    response = await mock_call("generate", {**BASE, "controls": controls})
    error = response["error"]
    assert error["code"] == -32602, error
    fields = {e["field"]: e["message"] for e in error["data"]["errors"]}
    assert field in fields, fields
    assert said in fields[field]


async def test_a_control_image_gets_a_references_checks() -> None:
    corrupt = {"mimeType": "image/png", "base64": base64.b64encode(b"\x89PNG not one").decode()}
    response = await mock_call(
        "generate", {**BASE, "controls": [{"model": "procedural-canny", "image": corrupt}]}
    )
    error = response["error"]
    assert error["code"] == -32602
    assert error["data"]["errors"][0]["field"].startswith("controls.0.image")
    # A 16-bit grey depth map is read faithfully (scaled to 8 bits), not refused.
    depth = Image.linear_gradient("L").resize((64, 64)).convert("I;16")
    depth = depth.point(lambda value: value * 257)
    answer = await mock_call("generate", {**BASE, "controls": [control("procedural-canny", depth)]})
    assert "result" in answer, answer


# --- Core ML, on the stand-in sampler ----------------------------------------------------


def controlled_bundle(standin: StandIn, name: str = "controlled", **options: Any) -> str:
    """A bundle in the models folder with two ControlNets and the controlled UNet; its id."""
    make_resource_dir(
        standin.models / name,
        family=options.pop("family", "sd1"),
        controlnets=options.pop("controlnets", ("Canny", "InPaint")),
        controlled_unet=options.pop("controlled_unet", True),
        **options,
    )
    return f"coreml_diffusion/{name}"


def steering(argv_file: Path, copies: Path) -> dict[str, str]:
    """The stand-in records its command lines and copies its ControlNets' images."""
    return {
        "STANDIN_SD_ARGV_FILE": str(argv_file),
        "STANDIN_SD_COPY_CONTROLNET_INPUTS_TO": str(copies),
    }


def runs(argv_file: Path) -> list[list[str]]:
    if not argv_file.exists():
        return []
    return [json.loads(line) for line in argv_file.read_text().splitlines()]


async def test_core_ml_lists_the_bundles_controlnets_and_says_it_has_no_weights(
    standin: StandIn,
) -> None:
    model_id = controlled_bundle(standin)
    controlled_bundle(standin, "no-controlled-unet", controlled_unet=False)
    controlled_bundle(standin, "xl", family="sdxl", size=(1024, 1024))
    settings = read_settings(standin.env)
    async with in_process_worker(settings, LINUX) as worker:
        models = {m["id"]: m for m in (await worker.call("capabilities"))["result"]["models"]}
    listed = models[model_id]
    assert [(c["name"], c["kind"]) for c in listed["controlnets"]] == [
        ("Canny", "canny"),
        ("InPaint", "inpaint"),
    ]
    assert listed["controlWeights"] is False and listed["controlsReason"] == ""
    assert listed["inpainting"] == "controlnet" and listed["inpaintingReason"] == ""
    assert any("full weight" in note for note in listed["notes"])
    lacking = models["coreml_diffusion/no-controlled-unet"]
    assert "lacks ControlledUnet.mlmodelc" in lacking["controlsReason"]
    assert lacking["inpainting"] == "none" and "ControlledUnet" in lacking["inpaintingReason"]
    assert "1.x/2.x bundles only" in models["coreml_diffusion/xl"]["controlsReason"]
    configured = next(m for m in models.values() if m["default"])
    assert "has no ControlNet" in configured["controlsReason"]
    assert "ControlNet-Models-For-Core-ML" in configured["controlsReason"]


async def test_core_ml_runs_controlnets_with_their_images_at_the_models_size(
    standin: StandIn, tmp_path: Path
) -> None:
    model_id = controlled_bundle(standin)
    argv_file, copies = tmp_path / "argv.jsonl", tmp_path / "inputs"
    copies.mkdir()
    env = steering(argv_file, copies)
    params = {"prompt": "a fox", "seed": 9, "model": model_id, "stepCount": 3}
    plain, _ = await generate_once(standin, params, env)
    steered, _ = await generate_once(
        standin, {**params, "controls": [control("Canny", edges((300, 200)))]}, env
    )
    assert pixels(steered["result"]["images"][0]) != pixels(plain["result"]["images"][0])
    argv = runs(argv_file)[-1]
    # Both options come before any other, and the prompt stays after `--`.
    assert argv[:2] == ["--controlnet", "Canny"] and argv[2] == "--controlnet-inputs"
    assert argv[4].startswith("--resource-path=") and argv[-2:] == ["--", "a fox"]
    with Image.open(copies / "0.png") as given:
        assert given.size == (512, 512)  # the ControlNet's controlnet_cond, not the image's
    assert steered["result"]["metadata"]["controls"][0]["model"] == "Canny"


@pytest.mark.parametrize(
    ("extra", "code", "said"),
    [
        ({"controls": [control("Canny", weight=0.5)]}, -32001, "no weight, start or end"),
        ({"controls": [control("Canny", end=0.5)]}, -32001, "no weight, start or end"),
        ({"controls": [control("Canny")], "guidanceScale": 0.5}, -32602, "guidance only"),
        ({"controls": [control("Depth")]}, -32602, "it has: Canny, InPaint"),
    ],
)
async def test_core_ml_refuses_what_its_sampler_cannot_do_before_it_starts(
    standin: StandIn, tmp_path: Path, extra: Message, code: int, said: str
) -> None:
    model_id = controlled_bundle(standin)
    argv_file = tmp_path / "argv.jsonl"
    params = {"prompt": "a fox", "model": model_id, **extra}
    response, _ = await generate_once(standin, params, {"STANDIN_SD_ARGV_FILE": str(argv_file)})
    assert response["error"]["code"] == code, response
    assert said in response["error"]["message"]
    assert runs(argv_file) == []


@pytest.mark.parametrize(
    ("bundle", "said"),
    [
        ({"family": "sdxl", "size": (1024, 1024)}, "1.x/2.x bundles only"),
        ({"controlled_unet": False}, "lacks ControlledUnet.mlmodelc"),
        ({"controlnets": ()}, "has no ControlNet"),
    ],
)
async def test_core_ml_refuses_controls_a_bundle_cannot_run(
    standin: StandIn, tmp_path: Path, bundle: Message, said: str
) -> None:
    model_id = controlled_bundle(standin, **bundle)
    argv_file = tmp_path / "argv.jsonl"
    params = {"prompt": "a fox", "model": model_id, "controls": [control("Canny")]}
    response, _ = await generate_once(standin, params, {"STANDIN_SD_ARGV_FILE": str(argv_file)})
    error = response["error"]
    assert (error["code"], error["data"]["feature"]) == (-32001, "controls"), error
    assert said in error["message"]
    assert runs(argv_file) == []


async def core_ml_previews(
    standin: StandIn, params: dict[str, Any], env: dict[str, str]
) -> list[Message]:
    """The `preview` notifications of one generate on the stand-in, which must succeed."""
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("STANDIN_")}):
        async with in_process_worker(read_settings({**standin.env, **env}), LINUX) as worker:
            message, previews = await generate_with_previews(worker, params, wait=60)
    assert "result" in message, message
    return previews


async def test_core_ml_inpaints_through_its_controlnet_keeping_the_source(
    standin: StandIn, tmp_path: Path
) -> None:
    model_id = controlled_bundle(standin)
    argv_file, copies = tmp_path / "argv.jsonl", tmp_path / "inputs"
    copies.mkdir()
    env = steering(argv_file, copies)
    source = source_image((512, 512))
    hole = (128, 128, 384, 320)
    mask = square_mask(source.size, hole)
    params = {
        "prompt": "a fox",
        "model": model_id,
        "stepCount": 3,
        "inputImages": [png_item(source)],
        "mask": png_item(mask),
        "controls": [control("Canny", edges((512, 512)))],
    }
    response, _ = await generate_once(standin, params, env)
    made = result_image(response["result"]["images"][0])
    assert made.tobytes() != source.tobytes()
    assert differing(made, source, mask, 0) == 0  # outside the mask: the source, exactly
    argv = runs(argv_file)[-1]
    assert argv[:3] == ["--controlnet", "InPaint", "Canny"]  # the edit's own model first
    with Image.open(copies / "0.png") as marked:
        assert marked.mode == "RGBA"
        alpha = marked.getchannel("A")
        assert alpha.getpixel((200, 200)) == 0 and alpha.getpixel((10, 10)) == 255
        assert marked.convert("RGB").getpixel((10, 10)) == source.getpixel((10, 10))
    # Its previews (the sampler's full decodes, shrunk) show the source where it is kept.
    previews = await core_ml_previews(standin, {**params, "previewEvery": 1}, env)
    assert previews
    for preview in previews:
        assert (preview["width"], preview["height"]) == (256, 256)
        assert kept_in_preview(preview, source, mask) == 0
    # Outpainting takes the same route: a 512x384 photo grown to the bundle's 512x512.
    wide = source_image((512, 384))
    grown_params = {
        "prompt": "a fox",
        "model": model_id,
        "stepCount": 3,
        "inputImages": [png_item(wide)],
        "outpaint": {"top": 64, "bottom": 64},
    }
    response, _ = await generate_once(standin, grown_params, env)
    grown = result_image(response["result"]["images"][0])
    assert grown.size == (512, 512)
    assert grown.crop((0, 64, 512, 448)).tobytes() == wide.tobytes()
    assert (
        grown.crop((0, 0, 512, 64)).tobytes() != Image.new("RGB", (512, 64), (127,) * 3).tobytes()
    )


# --- diffusers, for real, over stdio ------------------------------------------------------


def worker_beside_controlnets(
    model: Path, controlnets: Path, tmp_path: Path
) -> tuple[DiffusersSetup, WorkerProcess, Message]:
    """A diffusers worker for `model`, with `controlnets` as its models folder, and the
    model's entry of `capabilities.models`."""
    setup = DiffusersSetup(
        tmp_path, model, SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR=str(controlnets)
    )
    worker = start_worker_process(setup.env)
    models = {m["path"]: m for m in worker.call("capabilities")["result"]["models"]}
    return setup, worker, models[str(model)]


@pytest.mark.diffusers
def test_diffusers_controls_steer_as_their_weights_say(
    tiny_model: Path, tiny_controlnets: Path, tmp_path: Path
) -> None:
    setup, worker, listed = worker_beside_controlnets(tiny_model, tiny_controlnets, tmp_path)
    try:
        assert [c["name"] for c in listed["controlnets"]] == ["tiny-canny", "tiny-depth"]
        assert listed["controlWeights"] is True
        made: dict[str, bytes] = {}
        for name, controls in {
            "none": [],
            "weight 0": [control("tiny-canny", weight=0)],
            "weight 1": [control("tiny-canny")],
            "late": [control("tiny-canny", start=0.5)],
            "depth": [control("tiny-depth")],
            "both": [control("tiny-canny"), control("tiny-depth")],
        }.items():
            answer, notes = worker.exchange(
                "generate", {**BASE, "controls": controls, "previewEvery": 2}, name, LONG_WAIT
            )
            assert "result" in answer, answer
            assert any(n["method"] == "preview" for n in notes)  # previews, as without
            made[name] = pixels(answer["result"]["images"][0])
        assert made["weight 0"] == made["none"]
        assert made["weight 1"] != made["none"]
        assert len({made[k] for k in ("none", "weight 1", "late", "depth", "both")}) == 5
        source = source_image()
        mask = square_mask(source.size, (16, 16, 48, 48))
        answer, _ = worker.exchange(
            "generate",
            {
                **BASE,
                "inputImages": [png_item(source)],
                "mask": png_item(mask),
                "controls": [control("tiny-canny")],
            },
            "inpaint",
            timeout=LONG_WAIT,
        )
        inpainted = result_image(answer["result"]["images"][0])
        assert differing(inpainted, source, mask, 0) == 0
        assert differing(inpainted, source, mask, 255) > 900
        from_reference = {**BASE, "inputImages": [png_item(source)]}
        answer, _ = worker.exchange("generate", from_reference, "plain", timeout=LONG_WAIT)
        plain = pixels(answer["result"]["images"][0])
        answer, _ = worker.exchange(
            "generate",
            {**from_reference, "controls": [control("tiny-depth")]},
            "image-to-image",
            timeout=LONG_WAIT,
        )
        assert answer["result"]["metadata"]["usedReferenceImage"] is True
        assert pixels(answer["result"]["images"][0]) != plain
    finally:
        worker.close()
    assert setup.leftover_temp_entries() == []


@pytest.mark.diffusers
def test_a_controlnet_of_another_width_is_not_offered(
    tiny_sdxl: Path, tiny_controlnets: Path, tmp_path: Path
) -> None:
    _, worker, listed = worker_beside_controlnets(tiny_sdxl, tiny_controlnets, tmp_path)
    try:
        assert listed["controlnets"] == []
        assert "no ControlNet for Stable Diffusion XL is installed" in listed["controlsReason"]
        refused = worker.call("generate", {**BASE, "controls": [control("tiny-canny")]})
        assert refused["error"]["code"] == -32001
        assert refused["error"]["data"]["feature"] == "controls"
    finally:
        worker.close()
