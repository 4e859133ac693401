"""Masked editing: inpainting (`mask`) and outpainting (`outpaint`), as a user sees it.

What the mask keeps is the source's pixels byte for byte in the result; what it repaints
is generated. Checked in-process on the mock backend (its patterns are laid in where the
mask repaints), for real on the tiny diffusers models over the worker's stdio, and on
Core ML, which refuses before any sampler starts.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.diffusers_setup import DiffusersSetup, require_extra
from tests.standin import StandIn
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


def png_item(image: Image.Image) -> dict[str, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"mimeType": "image/png", "base64": base64.b64encode(buffer.getvalue()).decode()}


def source_image(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Two colours and a gradient row, so that a shift or a resample would show."""
    width, height = size
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((20, 200, 20), (0, 0, width // 2, height))
    for x in range(width):
        image.putpixel((x, 0), (x * 255 // width, 0, 255 - x * 255 // width))
    return image


def square_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def result_image(image: Message) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image["base64"]))).convert("RGB")


def differing(a: Image.Image, b: Image.Image, where: Image.Image, value: int) -> int:
    """How many pixels differ between `a` and `b` where `where` is `value`."""
    return sum(
        a.getpixel((x, y)) != b.getpixel((x, y))
        for y in range(a.height)
        for x in range(a.width)
        if where.getpixel((x, y)) == value
    )


def listed_model(worker: WorkerProcess, path: Path) -> Message:
    """The one entry of `capabilities.models` for the model at `path`."""
    models: list[Message] = worker.call("capabilities")["result"]["models"]
    (listed,) = [m for m in models if m["path"] == str(path)]
    return listed


async def mock_generate(params: dict[str, Any]) -> Message:
    async with in_process_worker(read_settings(MOCK), LINUX) as worker:
        return await worker.call("generate", params)


async def mock_generate_with_previews(params: dict[str, Any]) -> tuple[Message, list[Message]]:
    """The response, and the `preview` notifications before it."""
    async with in_process_worker(read_settings(MOCK), LINUX) as worker:
        return await generate_with_previews(worker, params)


def kept_in_preview(preview: Message, source: Image.Image, mask: Image.Image) -> int:
    """How many pixels of `preview` that its mask keeps are not the source's, both
    shrunk to the preview's size as the worker shrinks them."""
    made = result_image(preview)
    size = made.size
    return differing(
        made,
        source.resize(size, Image.Resampling.BILINEAR),
        mask.resize(size, Image.Resampling.BILINEAR),
        0,
    )


# --- inpainting on the mock, in-process --------------------------------------------------


async def test_what_the_mask_keeps_is_the_source_byte_for_byte() -> None:
    source = source_image()
    mask = square_mask(source.size, (16, 16, 48, 48))
    response = await mock_generate(
        {"prompt": "a fox", "inputImages": [png_item(source)], "mask": png_item(mask)}
    )
    result = response["result"]
    made = result_image(result["images"][0])
    assert made.size == source.size  # the reference's own size, no size asked
    assert differing(made, source, mask, 0) == 0
    assert differing(made, source, mask, 255) > 500  # nearly all of the 32x32 square
    metadata = result["metadata"]
    assert metadata["strength"] == 1.0 and metadata["sources"]["strength"] == "default"
    assert metadata["maskSha256"] and metadata["maskBlur"] == 0 and metadata["outpaint"] is None


async def test_previews_of_an_inpaint_show_the_source_where_the_mask_keeps_it() -> None:
    source = source_image()
    mask = square_mask(source.size, (16, 16, 48, 48))
    params = {"prompt": "a fox", "inputImages": [png_item(source)], "mask": png_item(mask)}
    response, previews = await mock_generate_with_previews(
        {**params, "stepCount": 4, "previewEvery": 1}
    )
    assert "result" in response and previews
    for preview in previews:
        assert (preview["width"], preview["height"]) == source.size
        assert kept_in_preview(preview, source, mask) == 0
        assert differing(result_image(preview), source, mask, 255) > 500


async def test_previews_of_an_outpaint_are_cut_to_the_result_with_the_source_in_place() -> None:
    source = source_image((64, 48))
    edge = {"left": 12, "right": 20, "top": 5, "bottom": 0}
    response, previews = await mock_generate_with_previews(
        {
            "prompt": "a fox",
            "inputImages": [png_item(source)],
            "outpaint": edge,
            "stepCount": 3,
            "previewEvery": 1,
        }
    )
    assert response["result"]["images"][0]["width"] == 96 and previews
    for preview in previews:
        made = result_image(preview)
        assert made.size == (96, 53) == (preview["width"], preview["height"])  # not 96x56
        assert made.crop((12, 5, 12 + 64, 5 + 48)).tobytes() == source.tobytes()


async def test_a_mask_of_another_size_is_scaled_to_the_reference() -> None:
    source = source_image()
    small_mask = square_mask((16, 16), (8, 0, 16, 16))  # the right half, at a quarter size
    response = await mock_generate(
        {"prompt": "a fox", "inputImages": [png_item(source)], "mask": png_item(small_mask)}
    )
    made = result_image(response["result"]["images"][0])
    half = square_mask(source.size, (32, 0, 64, 64))
    assert differing(made, source, half, 0) == 0
    assert differing(made, source, half, 255) > 1500


async def test_a_feathered_mask_softens_the_edge_and_still_keeps_far_pixels() -> None:
    source = source_image()
    mask = square_mask(source.size, (24, 24, 40, 40))
    params = {"prompt": "a fox", "inputImages": [png_item(source)], "mask": png_item(mask)}
    sharp = result_image((await mock_generate(params))["result"]["images"][0])
    soft_response = await mock_generate({**params, "maskBlur": 4})
    soft = result_image(soft_response["result"]["images"][0])
    far = Image.new("L", source.size, 255)
    far.paste(0, (12, 12, 52, 52))  # 255 more than the blur's reach from the square
    assert differing(soft, source, far, 255) == 0
    assert soft.tobytes() != sharp.tobytes()  # the ring around the square is blended
    assert soft_response["result"]["metadata"]["maskBlur"] == 4


async def test_the_png_records_the_mask() -> None:
    source = source_image()
    mask = square_mask(source.size, (0, 0, 8, 8))
    response = await mock_generate(
        {"prompt": "a fox", "inputImages": [png_item(source)], "mask": png_item(mask)}
    )
    image = response["result"]["images"][0]
    with Image.open(io.BytesIO(base64.b64decode(image["base64"]))) as opened:
        record = json.loads(opened.info["studio-imagegen"])
    assert record["effective"]["maskSha256"] == response["result"]["metadata"]["maskSha256"]
    assert record["request"]["mask"]["mimeType"] == "image/png"


# --- outpainting ---------------------------------------------------------------------


async def test_outpaint_grows_the_canvas_with_the_original_inside_unchanged() -> None:
    source = source_image((64, 48))
    response = await mock_generate(
        {
            "prompt": "a fox",
            "inputImages": [png_item(source)],
            "outpaint": {"left": 12, "right": 20, "top": 5, "bottom": 0},
        }
    )
    result = response["result"]
    made = result_image(result["images"][0])
    assert made.size == (64 + 32, 48 + 5) == (result["images"][0]["width"], 53)
    assert made.crop((12, 5, 12 + 64, 5 + 48)).tobytes() == source.tobytes()
    assert made.crop((0, 0, 12, 53)).getcolors(5000) != source.crop((0, 0, 12, 53)).getcolors()
    assert result["metadata"]["outpaint"] == {"left": 12, "right": 20, "top": 5, "bottom": 0}
    assert (result["metadata"]["width"], result["metadata"]["height"]) == (96, 53)


async def test_outpaint_to_an_aspect_ratio_extends_the_shorter_way_evenly() -> None:
    source = source_image((64, 64))
    response = await mock_generate(
        {"prompt": "a fox", "inputImages": [png_item(source)], "outpaint": {"aspectRatio": "16:9"}}
    )
    result = response["result"]
    made = result_image(result["images"][0])
    assert made.size == (114, 64)
    sides = result["metadata"]["outpaint"]
    assert sides == {"left": 25, "right": 25, "top": 0, "bottom": 0}
    assert made.crop((25, 0, 89, 64)).tobytes() == source.tobytes()


# --- what is refused, naming the field -------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"mask": "MASK"}, "", "give it in inputImages"),
        ({"inputImages": ["SOURCE"], "mask": "MASK", "outpaint": {"left": 8}}, "", "not both"),
        ({"inputImages": ["SOURCE"], "outpaint": {}}, "outpaint", "extends nothing"),
        ({"inputImages": ["SOURCE"], "outpaint": {"left": -1}}, "outpaint.left", "greater than"),
        (
            {"inputImages": ["SOURCE"], "outpaint": {"left": 8, "aspectRatio": "1:1"}},
            "outpaint",
            "not both",
        ),
        ({"inputImages": ["SOURCE"], "outpaint": {"aspectRatio": "wide"}}, "outpaint", "W:H"),
        (
            {"inputImages": ["SOURCE"], "outpaint": {"left": 8}, "width": 64, "height": 64},
            "",
            "outpaint sets the size",
        ),
        ({"inputImages": ["SOURCE"], "mask": "MASK", "maskBlur": 999}, "maskBlur", "256"),
        ({"inputImages": ["SOURCE"], "outpaint": {"left": 2040}}, "outpaint", "largest side"),
        ({"inputImages": ["SOURCE"], "mask": "BLACK"}, "mask", "repaints nothing"),
        ({"inputImages": ["SOURCE"], "mask": "CORRUPT"}, "mask", "not an image"),
        ({"inputImages": ["SOURCE"], "mask": "LIAR"}, "mask.mimeType", "the content is"),
    ],
)
async def test_a_bad_edit_is_refused_naming_the_field(
    params: dict[str, Any], field: str, words: str
) -> None:
    source = png_item(source_image())
    items = {
        "SOURCE": source,
        "MASK": png_item(square_mask((64, 64), (0, 0, 8, 8))),
        "BLACK": png_item(Image.new("L", (64, 64), 0)),
        "CORRUPT": {"mimeType": "image/png", "base64": base64.b64encode(b"not a png").decode()},
        "LIAR": {**png_item(square_mask((64, 64), (0, 0, 8, 8))), "mimeType": "image/jpeg"},
    }

    def filled(value: Any) -> Any:
        if isinstance(value, list):
            return [filled(v) for v in value]
        return items.get(value, value) if isinstance(value, str) else value

    response = await mock_generate({"prompt": "a fox", **{k: filled(v) for k, v in params.items()}})
    error = response["error"]
    assert error["code"] == -32602, error
    assert words in error["message"]
    if field:
        assert field in [e["field"] for e in error["data"]["errors"]]


@pytest.mark.parametrize("mode", ["I;16", "P", "LA"])
async def test_a_mask_of_an_odd_mode_is_read_as_it_looks(mode: str) -> None:
    """16-bit grey scaled, a palette expanded, transparency repaints (alpha 0)."""
    source = source_image()
    repaint = (32, 0, 64, 64)
    if mode == "I;16":
        mask: Image.Image = Image.new("I;16", (64, 64), 0)
        mask.paste(65535, repaint)
    elif mode == "P":
        mask = square_mask((64, 64), repaint).convert("P")
    else:  # opaque black keeps, fully transparent repaints
        mask = Image.new("LA", (64, 64), (0, 255))
        mask.paste((0, 0), repaint)
    response = await mock_generate(
        {"prompt": "a fox", "inputImages": [png_item(source)], "mask": png_item(mask)}
    )
    made = result_image(response["result"]["images"][0])
    right = square_mask((64, 64), repaint)
    assert differing(made, source, right, 0) == 0
    assert differing(made, source, right, 255) > 1500


# --- Core ML: refused before any sampler starts ---------------------------------------


def test_core_ml_refuses_masked_editing_before_a_sampler_starts(
    standin: StandIn, tmp_path: Path
) -> None:
    argv_file = tmp_path / "argv.jsonl"
    worker = start_worker_process({**standin.env, "STANDIN_SD_ARGV_FILE": str(argv_file)})
    try:
        model = worker.call("capabilities")["result"]["models"][0]
        assert model["inpainting"] == "none"
        assert "no mask mode" in model["inpaintingReason"]
        assert "ControlNet-Models-For-Core-ML" in model["inpaintingReason"]
        source = png_item(source_image((512, 512)))
        for edit in (
            {"mask": png_item(square_mask((512, 512), (0, 0, 9, 9)))},
            {"outpaint": {"left": 64}},
        ):
            response = worker.call("generate", {"prompt": "a fox", "inputImages": [source], **edit})
            error = response["error"]
            assert error["code"] == -32001, error
            assert error["data"]["feature"] == next(iter(edit))
            assert "no mask mode" in error["message"]
        assert "result" in worker.call("generate", {"prompt": "a fox", "stepCount": 2})
    finally:
        worker.close()
    assert len(argv_file.read_text().splitlines()) == 1  # only the last generate ran one


# --- diffusers, for real, over stdio ------------------------------------------------------


@pytest.mark.diffusers
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_inpaints_and_outpaints_keeping_the_source(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    require_extra()
    model: Path = request.getfixturevalue("tiny_model" if family == "sd1" else "tiny_sdxl")
    setup = DiffusersSetup(tmp_path, model)
    worker = start_worker_process(setup.env)
    try:
        assert listed_model(worker, model)["inpainting"] == "native"
        source = source_image()
        mask = square_mask(source.size, (16, 16, 48, 48))
        params = {"prompt": "a fox", "seed": 3, "inputImages": [png_item(source)]}
        answer, notes = worker.exchange(
            "generate",
            {**params, "mask": png_item(mask), "stepCount": 4, "previewEvery": 1},
            "inpaint",
            timeout=LONG_WAIT,
        )
        made = result_image(answer["result"]["images"][0])
        assert differing(made, source, mask, 0) == 0
        assert differing(made, source, mask, 255) > 900
        assert any(n["params"].get("phase") == "sampling" for n in notes)
        # Its latent previews show the source where it is kept, the generation elsewhere.
        previews = [n["params"] for n in notes if n["method"] == "preview"]
        assert len(previews) == 3
        for preview in previews:
            assert kept_in_preview(preview, source, mask) == 0
            made = result_image(preview)
            shrunk = source.resize(made.size, Image.Resampling.BILINEAR)
            repainted = mask.resize(made.size, Image.Resampling.BILINEAR)
            assert differing(made, shrunk, repainted, 255) > made.width * made.height // 8
        answer, _ = worker.exchange(
            "generate", {**params, "outpaint": {"right": 12, "bottom": 4}}, "out", timeout=LONG_WAIT
        )
        grown = result_image(answer["result"]["images"][0])
        assert grown.size == (76, 68)
        assert grown.crop((0, 0, 64, 64)).tobytes() == source.tobytes()
        assert (
            grown.crop((64, 0, 76, 68)).tobytes()
            != Image.new("RGB", (12, 68), (127,) * 3).tobytes()
        )
    finally:
        worker.close()
    assert setup.leftover_temp_entries() == []


@pytest.mark.diffusers
def test_an_inpainting_checkpoint_inpaints_and_refuses_what_needs_no_mask(
    tiny_inpainting: Path, tmp_path: Path
) -> None:
    setup = DiffusersSetup(tmp_path, tiny_inpainting)
    worker = start_worker_process(setup.env)
    try:
        listed = listed_model(worker, tiny_inpainting)
        assert (listed["variant"], listed["inpainting"]) == ("inpainting", "native")
        source = source_image()
        refused = worker.call("generate", {"prompt": "a fox", "inputImages": [png_item(source)]})
        assert refused["error"]["code"] == -32001
        assert "makes images only with a mask" in refused["error"]["message"]
        mask = square_mask(source.size, (0, 0, 32, 64))
        answer, _ = worker.exchange(
            "generate",
            {"prompt": "a fox", "inputImages": [png_item(source)], "mask": png_item(mask)},
            "inpaint",
            timeout=LONG_WAIT,
        )
        made = result_image(answer["result"]["images"][0])
        assert differing(made, source, mask, 0) == 0
        assert differing(made, source, mask, 255) > 1500
    finally:
        worker.close()
    assert setup.leftover_temp_entries() == []


@pytest.mark.diffusers
def test_sd3_says_it_does_not_inpaint_and_refuses_before_loading(
    tiny_sd3: Path, tmp_path: Path
) -> None:
    setup = DiffusersSetup(tmp_path, tiny_sd3)
    worker = start_worker_process(setup.env)
    try:
        listed = listed_model(worker, tiny_sd3)
        assert listed["inpainting"] == "none"
        assert "SD 1.x/2.x and SDXL have it" in listed["inpaintingReason"]
        source = png_item(source_image())
        refused = worker.call(
            "generate", {"prompt": "a fox", "inputImages": [source], "outpaint": {"left": 8}}
        )
        assert refused["error"]["code"] == -32001, refused
        assert refused["error"]["data"]["feature"] == "outpaint"
        assert worker.call("capabilities")["result"]["backend"]["modelHost"]["pid"] is None
    finally:
        worker.close()
