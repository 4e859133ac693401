"""Image-to-image: a reference from a staged file or base64, checked and prepared before
the job is queued, then passed to the sampler with its strength."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from PIL import Image, ImageStat

from fixtures.resources import make_resource_dir
from tests.standin import StandIn, generate_once
from tests.worker_clients import WorkerProcess
from worker.backends.coreml.sampler.schedule import timestep_count
from worker.backends.registry import read_settings

StartWorker = Callable[..., WorkerProcess]
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6


def photo_jpeg(size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A camera-like JPEG stored sideways: red left half, blue right half as stored, with
    EXIF orientation 6, so that upright its top half is red and its bottom half blue."""
    width, height = size
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=80)
    return buffer.getvalue()


@pytest.mark.parametrize("source", ["stagedPath", "base64"])
def test_a_sideways_photo_reaches_the_sampler_upright_and_cropped(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path, source: str
) -> None:
    jpeg = photo_jpeg()
    seen_by_sampler = tmp_path / "seen.png"
    worker = worker_process(
        {
            **standin.env,
            "STANDIN_SD_COPY_IMAGE_TO": str(seen_by_sampler),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "10",
        }
    )
    if source == "stagedPath":
        staged = tmp_path / "staged.jpg"
        staged.write_bytes(jpeg)
        item = {
            "hash": "studio-hash",
            "mimeType": "image/jpeg",
            "sizeBytes": len(jpeg),
            "stagedPath": str(staged),
        }
    else:
        item = {"mimeType": "image/jpeg", "base64": base64.b64encode(jpeg).decode()}
    answer, notifications = worker.exchange(
        "generate", {"prompt": "a fox", "seed": 9, "inputImages": [item]}
    )
    progress = [n["params"] for n in notifications]
    result = answer["result"]
    metadata = result["metadata"]
    assert metadata["usedReferenceImage"] is True
    assert metadata["strength"] == 0.55 and metadata["sources"]["strength"] == "default"
    assert metadata["referenceSha256"] == hashlib.sha256(jpeg).hexdigest()
    assert result["images"][0]["fileName"] == "a_fox.str55.9.final.png"
    assert result["warnings"] == []
    # 10 pndm steps at strength 0.55 run 6 of the 11 timesteps: known from the start.
    expected_total = timestep_count(10, "pndm", 0.55)
    assert expected_total == 6
    assert {p["totalSteps"] for p in progress} == {expected_total}
    with Image.open(seen_by_sampler) as seen:
        assert seen.format == "PNG" and seen.size == (512, 512) and seen.mode == "RGB"
        top, bottom = seen.getpixel((256, 40)), seen.getpixel((256, 470))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60, top  # red on top: the EXIF rotation was applied
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_strength_wins_over_the_influence_preset_and_extra_images_are_a_warning(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path
) -> None:
    png = tmp_path / "ref.png"
    Image.new("RGBA", (300, 200), (0, 255, 0, 0)).save(png)
    item = {"mimeType": "image/png", "stagedPath": str(png)}
    worker = worker_process(standin.env)
    preset, _ = worker.exchange(
        "generate", {"prompt": "fox", "inputImages": [item], "referenceInfluence": "Strong"}, "p"
    )
    assert preset["result"]["metadata"]["strength"] == 0.35
    assert preset["result"]["metadata"]["sources"]["strength"] == "preset"
    chosen, _ = worker.exchange(
        "generate",
        {
            "prompt": "fox",
            "inputImages": [item, item, item],
            "referenceInfluence": "subtle",
            "strength": 0.9,
        },
        "s",
    )
    metadata = chosen["result"]["metadata"]
    assert (metadata["strength"], metadata["sources"]["strength"]) == (0.9, "request")
    assert chosen["result"]["warnings"] == [
        "Received 3 reference images. Local backend currently uses only the first image."
    ]


def _bomb_png(side: int = 20000) -> bytes:
    """A PNG header claiming side x side pixels, and no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "field", "reason"),
    [
        (
            lambda d: {"mimeType": "image/png", "stagedPath": str(d / "gone.png")},
            "stagedPath",
            "cannot be read (No such file or directory)",
        ),
        (
            lambda d: {"mimeType": "image/png", "path": "relative.png"},
            "path",
            "is not an absolute path",
        ),
        (
            lambda d: {"mimeType": "image/png", "stagedPath": str(d)},
            "stagedPath",
            "is not a regular file",
        ),
        (
            lambda d: {"mimeType": "image/png", "base64": "not base64!"},
            "base64",
            "is not valid base64",
        ),
        (
            lambda d: {"mimeType": "image/png", "base64": base64.b64encode(b"hello").decode()},
            "",
            "is not an image",
        ),
        (
            lambda d: {"mimeType": "image/jpeg", "base64": base64.b64encode(_png_bytes()).decode()},
            "mimeType",
            "says image/jpeg but the content is image/png",
        ),
        (
            lambda d: {"mimeType": "image/gif", "base64": base64.b64encode(_png_bytes()).decode()},
            "mimeType",
            "'image/gif' is not a reference type",
        ),
        (
            lambda d: {"mimeType": "image/png", "base64": base64.b64encode(_bomb_png()).decode()},
            "",
            "over the limit of 50,000,000 pixels; send a smaller image",
        ),
        (
            lambda d: {
                "mimeType": "image/png",
                "base64": base64.b64encode(_bomb_png(8000)).decode(),
            },
            "",
            "is 8000x8000, over the limit of 50,000,000 pixels",
        ),
        (
            lambda d: {
                "mimeType": "image/jpeg",
                "base64": base64.b64encode(photo_jpeg((800, 600))[:3000]).decode(),
            },
            "",
            "is corrupt or truncated",
        ),
    ],
)
async def test_a_bad_reference_is_invalid_params_naming_index_and_reason(
    standin: StandIn,
    tmp_path: Path,
    make: Callable[[Path], dict[str, Any]],
    field: str,
    reason: str,
) -> None:
    params = {"prompt": "fox", "inputImages": [make(tmp_path)]}
    response, progress = await generate_once(standin, params)
    assert response["error"]["code"] == -32602, response
    (error,) = response["error"]["data"]["errors"]
    assert error["field"] == "inputImages.0" + (f".{field}" if field else "")
    assert reason in error["message"], error
    assert progress == [] and standin.live_processes() == []


async def test_a_reference_over_the_byte_limit_is_refused_before_it_is_read(
    standin: StandIn, tmp_path: Path
) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(_png_bytes() + b"\0" * 4096)
    with mock.patch("worker.reference.MAX_REFERENCE_BYTES", 1024):
        response, _ = await generate_once(
            standin, {"prompt": "fox", "inputImages": [{"mimeType": "image/png", "path": str(big)}]}
        )
    (error,) = response["error"]["data"]["errors"]
    assert error["field"] == "inputImages.0.path" and "over the limit of 0 MiB" in error["message"]


async def test_without_the_vae_encoder_image_to_image_is_unsupported_and_says_how(
    standin: StandIn, tmp_path: Path
) -> None:
    resources = make_resource_dir(tmp_path / "no-encoder", omit=["VAEEncoder.mlmodelc"])
    env = {"SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(resources)}
    png = tmp_path / "ref.png"
    png.write_bytes(_png_bytes())
    item = {"mimeType": "image/png", "path": str(png)}
    response, progress = await generate_once(standin, {"prompt": "fox", "inputImages": [item]}, env)
    assert response["error"]["code"] == -32001
    assert response["error"]["data"] == {"feature": "inputImages", "supported": []}
    assert "needs VAEEncoder.mlmodelc" in response["error"]["message"]
    assert "--convert-vae-encoder" in response["error"]["message"]
    assert progress == []
    # The stand-in fails as the real sampler does, so the refusal spares a run.
    text_only, _ = await generate_once(standin, {"prompt": "fox"}, env)
    assert "result" in text_only


async def test_strengths_the_sampler_traps_on_are_refused(standin: StandIn, tmp_path: Path) -> None:
    png = tmp_path / "ref.png"
    png.write_bytes(_png_bytes())
    params = {
        "prompt": "fox",
        "inputImages": [{"mimeType": "image/png", "path": str(png)}],
        "scheduler": "dpmpp",
        "stepCount": 5,
        "strength": 0.1,
    }
    response, progress = await generate_once(standin, params)
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["errors"][0]["field"] == "strength"
    assert progress == []


async def test_the_mock_backend_blends_the_reference(tmp_path: Path) -> None:
    from tests.worker_clients import in_process_worker

    png = tmp_path / "white.png"
    Image.new("RGB", (512, 512), (255, 255, 255)).save(png)
    settings = read_settings({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"})
    images = {}
    async with in_process_worker(settings) as worker:
        for strength in (0.1, 1.0):
            params = {
                "prompt": "fox",
                "strength": strength,
                "inputImages": [{"mimeType": "image/png", "path": str(png)}],
            }
            response = await worker.call("generate", params, id_=str(strength))
            data = base64.b64decode(response["result"]["images"][0]["base64"])
            with Image.open(io.BytesIO(data)) as image:
                images[strength] = ImageStat.Stat(image.convert("L")).mean[0]
    assert images[0.1] > images[1.0]  # a low strength stays close to the white reference


async def test_a_cancel_while_the_reference_is_prepared_answers_at_once(
    standin: StandIn, tmp_path: Path
) -> None:
    """A large photo takes a while to decode; a cancel in that time must find the job."""
    import anyio

    from tests.worker_clients import in_process_worker, request
    from worker import reference as reference_module

    png = tmp_path / "ref.png"
    png.write_bytes(_png_bytes())
    real = reference_module.prepare_reference

    def slow(*args: Any) -> Any:
        import time

        time.sleep(1.0)
        return real(*args)

    params = {"prompt": "fox", "inputImages": [{"mimeType": "image/png", "path": str(png)}]}
    with mock.patch("worker.generation.prepare_reference", slow):
        async with in_process_worker(read_settings(standin.env)) as worker:
            await worker.send(request("generate", params, "g"))
            await anyio.sleep(0.2)
            await worker.send(request("cancel", {"requestId": "g"}, "c"))
            answers: dict[str, Any] = {}
            while len(answers) < 2:
                message = await worker.receive(wait=10)
                assert "method" not in message, message  # the sampler never started
                answers[message["id"]] = message
    assert answers["c"]["result"] == {"cancelled": ["g"]}
    assert answers["g"]["error"]["code"] == -32800
