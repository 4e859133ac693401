"""Live previews over the real stdio: a thumbnail per intermediate image, inline or as a
file, never after the answer, never among the final images."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.diffusers_setup import DiffusersSetup
from tests.standin import StandIn
from tests.test_controlnet import mock_call
from tests.worker_clients import WorkerProcess, request, start_worker_process

StartWorker = Callable[..., WorkerProcess]


def _previews(notifications: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n["params"] for n in notifications if n["method"] == "preview"]


def test_previews_inline_every_second_step(standin: StandIn, worker_process: StartWorker) -> None:
    worker = worker_process(standin.env)  # 4 pndm steps: 5 timesteps, indexes 0..4
    answer, notifications = worker.exchange(
        "generate", {"prompt": "fox", "count": 2, "seed": 3, "previewEvery": 2}
    )
    previews = _previews(notifications)
    assert [(p["step"], p["index"]) for p in previews] == [
        (1, 0),
        (1, 1),
        (3, 0),
        (3, 1),
        (5, 0),
        (5, 1),
    ]
    for preview in previews:
        assert preview["totalSteps"] == 5 and preview["requestId"] == 1
        assert preview["mimeType"] == "image/png" and "path" not in preview
        with Image.open(io.BytesIO(base64.b64decode(preview["base64"]))) as thumbnail:
            assert thumbnail.size == (preview["width"], preview["height"]) == (256, 256)
    images = answer["result"]["images"]
    assert [image["fileName"] for image in images] == ["fox.0.3.final.png", "fox.1.3.final.png"]


def test_previews_as_files_with_path_output(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path
) -> None:
    out = tmp_path / "studio"
    out.mkdir()
    worker = worker_process(standin.env)
    answer, notifications = worker.exchange(
        "generate",
        {"prompt": "fox", "seed": 3, "previewEvery": 4, "output": "path", "outputDir": str(out)},
    )
    previews = _previews(notifications)
    assert [p["step"] for p in previews] == [1, 5]
    for preview in previews:
        path = Path(preview["path"])
        assert path.parent == out and "base64" not in preview
        with Image.open(path) as thumbnail:
            assert thumbnail.size == (256, 256)
    finals = [Path(image["path"]).name for image in answer["result"]["images"]]
    assert finals == ["fox.3.final.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["fox.3.final.png", "fox.3.0.preview.png", "fox.3.4.preview.png"]
    )


def test_a_preview_that_cannot_be_read_costs_nothing_but_itself(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process({**standin.env, "STANDIN_SD_CORRUPT_PREVIEWS": "1"})
    answer, notifications = worker.exchange("generate", {"prompt": "fox", "previewEvery": 1})
    assert _previews(notifications) == []
    assert len(answer["result"]["images"]) == 1
    assert "a preview was skipped" in worker.stderr


def test_cancel_during_previews_stops_them_with_the_answer(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process({**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.2"})
    worker.send(request("generate", {"prompt": "fox", "stepCount": 30, "previewEvery": 1}, "g"))
    while worker.receive(30).get("method") != "preview":
        pass
    worker.send(request("cancel", {"requestId": "g"}, "c"))
    after_answer = []
    answered = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        message = worker.receive(30)
        if message.get("id") == "g":
            assert message["error"]["code"] == -32800
            answered = True
            worker.send(request("capabilities", id_="fence"))
        elif answered and message.get("method"):
            after_answer.append(message)
        elif message.get("id") == "fence":
            break
    assert answered and after_answer == []
    worker.close_input()
    assert worker.wait(30) == 0
    assert standin.live_processes() == []  # the worker carries the marker too


@pytest.mark.parametrize("backend", ["mock"])
def test_the_mock_backend_sends_previews_too(worker_process: StartWorker, backend: str) -> None:
    worker = worker_process({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": backend})
    _, notifications = worker.exchange(
        "generate", {"prompt": "fox", "stepCount": 4, "previewEvery": 2}
    )
    assert [p["step"] for p in _previews(notifications)] == [1, 3, 5]


def test_core_ml_previews_are_full_decodes_and_it_says_so(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process(standin.env)
    model = worker.call("capabilities")["result"]["models"][0]
    assert model["previewDecoders"] == ["vae"] and "decodes every preview" in model["previewNote"]
    refused = worker.call(
        "generate", {"prompt": "fox", "previewEvery": 1, "previewDecoder": "latent"}
    )
    assert refused["error"]["code"] == -32001
    assert refused["error"]["data"] == {"feature": "previewDecoder", "supported": ["vae"]}


@pytest.mark.diffusers
def test_taesd_previews_decode_where_one_is_installed(
    tiny_model: Path, tiny_taesd: Path, tmp_path: Path
) -> None:
    setup = DiffusersSetup(
        tmp_path, tiny_model, SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR=str(tiny_taesd)
    )
    worker = start_worker_process(setup.env)
    try:
        models = worker.call("capabilities")["result"]["models"]
        [tiny] = [model for model in models if model["path"] == str(tiny_model)]
        assert tiny["previewDecoders"] == ["latent", "taesd", "vae"]
        assert "taesd: a tiny decoder (taesd)" in tiny["previewNote"]
        params = {"prompt": "a tree", "seed": 3, "stepCount": 6, "width": 64, "height": 64}
        made, previews = {}, {}
        for decoder in ("none", "latent", "taesd"):
            extra = {} if decoder == "none" else {"previewEvery": 1, "previewDecoder": decoder}
            answer, notes = worker.exchange("generate", {**params, **extra}, decoder, 120.0)
            assert "result" in answer, answer
            data = base64.b64decode(answer["result"]["images"][0]["base64"])
            made[decoder] = Image.open(io.BytesIO(data)).convert("RGB").tobytes()
            previews[decoder] = _previews(notes)
        assert len(set(made.values())) == 1  # previews only look: the image is the same
        tiny_ones = previews["taesd"]
        assert [p["step"] for p in tiny_ones] == [p["step"] for p in previews["latent"]]
        assert [p["step"] for p in tiny_ones] == [2, 3, 4, 5, 6]
        for tiny_preview, latent in zip(tiny_ones, previews["latent"], strict=True):
            assert (tiny_preview["width"], tiny_preview["height"]) == (64, 64)
            assert tiny_preview["base64"] != latent["base64"]
    finally:
        worker.close()
    assert setup.leftover_temp_entries() == []


async def test_taesd_is_refused_where_none_is_installed() -> None:
    refused = await mock_call(
        "generate", {"prompt": "fox", "previewEvery": 1, "previewDecoder": "taesd"}
    )
    error = refused["error"]
    assert (error["code"], error["data"]["supported"]) == (-32001, ["latent", "vae"])
