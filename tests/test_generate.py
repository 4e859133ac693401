"""`generate` against the stand-in sampler, in-process: results, progress and every error."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from PIL import Image

from protocol.models import GenerateParams
from tests.standin import StandIn, call_collecting, generate_once
from tests.worker_clients import LINUX, in_process_worker, request
from worker.backends.base import Rendered
from worker.backends.mock import procedural_png
from worker.backends.registry import read_settings
from worker.errors import WorkerError
from worker.generation import deliver
from worker.images import RenderedImage, write_without_clobbering
from worker.parameters import resolve_parameters
from worker.prompt_weights import plain
from worker.seed import derive_seed


def _decode(image: dict[str, Any]) -> Image.Image:
    png = Image.open(io.BytesIO(base64.b64decode(image["base64"])))
    png.load()
    return png


async def test_generate_returns_checked_pngs_with_their_parameters(standin: StandIn) -> None:
    response, _ = await generate_once(
        standin,
        {"prompt": " a red fox in snow ", "runId": "run_1", "count": 2, "negativePrompt": "blurry"},
    )
    result = response["result"]
    assert response["id"] == "g"
    assert result["schema"] == "studio.local-image-generation.response.v1"
    assert result["modelId"] == (
        "local/macos-coreml-stable-diffusion-2-1-base-palettized:cpuAndNeuralEngine"
    )
    assert result["warnings"] == []
    assert [i["index"] for i in result["images"]] == [0, 1]
    for image in result["images"]:
        assert image["seed"] == 349733761 == derive_seed("a red fox in snow", "run_1")
        assert (image["mimeType"], image["width"], image["height"]) == ("image/png", 512, 512)
        assert image["fileName"] == f"a_red_fox_in_snow.{image['index']}.349733761.final.png"
        assert "path" not in image
        png = _decode(image)
        assert png.size == (512, 512)
        assert png.info["parameters"].splitlines() == [
            "a red fox in snow",
            "Negative prompt: blurry",
            "Steps: 4, Sampler: PNDM, CFG scale: 7.5, Seed: 349733761, Size: 512x512, "
            "Model: local/macos-coreml-stable-diffusion-2-1-base-palettized:cpuAndNeuralEngine, "
            f"Compute units: cpuAndNeuralEngine, Batch size: 2, Batch pos: {image['index']}, "
            "Version: studio-imagegen-worker 0.1.0",
        ]
        record = json.loads(png.info["studio-imagegen"])
        assert record["request"]["prompt"] == "a red fox in snow"
        assert record["effective"]["seed"] == 349733761
    metadata = result["metadata"]
    assert metadata["backend"] == "coreml_diffusion"
    assert metadata["sampleBinary"] == standin.env["SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN"]
    assert metadata["resourcePath"] == str(standin.resources)
    assert (metadata["stepCount"], metadata["guidanceScale"], metadata["scheduler"]) == (
        4,
        7.5,
        "pndm",
    )
    assert (metadata["requestedAspectRatio"], metadata["actualAspectRatio"]) == ("1:1", "1:1")
    assert metadata["computeUnits"] == "cpuAndNeuralEngine"
    assert 0 < metadata["durationMs"] <= metadata["totalMs"]


async def test_the_same_request_gives_the_same_images(standin: StandIn) -> None:
    first, _ = await generate_once(standin, {"prompt": "fox", "runId": "r"})
    second, _ = await generate_once(standin, {"prompt": "fox", "runId": "r"})
    other, _ = await generate_once(standin, {"prompt": "fox", "runId": "other"})
    pixels = [_decode(r["result"]["images"][0]).tobytes() for r in (first, second, other)]
    assert pixels[0] == pixels[1] != pixels[2]


async def test_overrides_reach_the_sampler(standin: StandIn) -> None:
    response, notifications = await generate_once(
        standin,
        {
            "prompt": "fox",
            "stepCount": 6,
            "guidanceScale": 3.5,
            "scheduler": "dpmpp",
            "computeUnits": "cpuOnly",
            "seed": 7,
        },
    )
    result = response["result"]
    assert result["modelId"].endswith(":cpuOnly")
    assert result["images"][0]["fileName"] == "fox.7.final.png"
    assert result["metadata"]["guidanceScale"] == 3.5
    steps = [n for n in notifications if n["phase"] == "sampling" and n["step"] > 0]
    assert [n["step"] for n in steps] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("scheduler", "total"), [("pndm", 6), ("dpmpp", 5)])
async def test_progress_counts_completed_steps_of_the_samplers_own_total(
    standin: StandIn, scheduler: str, total: int
) -> None:
    response, notifications = await generate_once(
        standin, {"prompt": "fox", "runId": "run-9", "stepCount": 5, "scheduler": scheduler}
    )
    assert "result" in response
    phases = [n["phase"] for n in notifications]
    assert phases[0] == "loading" and phases[-1] == "saving"
    assert phases == sorted(phases, key=["loading", "sampling", "saving"].index)
    steps = [n for n in notifications if n["phase"] == "sampling" and n["step"] > 0]
    assert [n["step"] for n in steps] == list(range(1, total + 1))
    assert all(n["totalSteps"] == total for n in steps)
    assert steps[-1]["fraction"] == 1.0 and steps[0]["fraction"] == pytest.approx(1 / total)
    assert all(n["stepsPerSecond"] > 0 and n["etaMs"] >= 0 for n in steps)
    assert {n["requestId"] for n in notifications} == {"g"}
    assert {n["runId"] for n in notifications} == {"run-9"}
    assert all("queuePosition" not in n for n in notifications)


async def test_path_output_writes_into_the_hosts_directory_without_clobbering(
    standin: StandIn, tmp_path: Path
) -> None:
    out = tmp_path / "studio-out"
    out.mkdir()
    params = {"prompt": "fox", "count": 2, "seed": 5, "output": "path", "outputDir": str(out)}
    first, _ = await generate_once(standin, params)
    second, _ = await generate_once(standin, params)
    paths = [image["path"] for r in (first, second) for image in r["result"]["images"]]
    assert [Path(p).name for p in paths] == [
        "fox.0.5.final.png",
        "fox.1.5.final.png",
        "fox.0.5.final-1.png",
        "fox.1.5.final-1.png",
    ]
    for path in paths:
        assert Path(path).is_absolute() and Path(path).parent == out
        with Image.open(path) as png:
            assert png.size == (512, 512) and "parameters" in png.info
    assert all("base64" not in image for image in first["result"]["images"])


@pytest.mark.parametrize(
    ("directory", "reason"),
    [("/proc", "No such file or directory"), ("/sys", "Permission denied")],
)
async def test_an_output_dir_that_takes_no_files_is_refused_before_sampling(
    standin: StandIn, directory: str, reason: str
) -> None:
    params = {"prompt": "fox", "output": "path", "outputDir": directory}
    response, progress = await generate_once(standin, params)
    assert response["error"]["code"] == -32602, response
    (error,) = response["error"]["data"]["errors"]
    assert error["field"] == "outputDir"
    assert error["message"] == f"does not take new files ({reason}); choose another directory"
    assert progress == []


async def test_an_output_dir_removed_during_the_job_is_output_not_written(
    standin: StandIn, tmp_path: Path
) -> None:
    out = tmp_path / "going"
    out.mkdir()
    params = {"prompt": "fox", "count": 2, "output": "path", "outputDir": str(out)}
    settings = read_settings(standin.env)
    with mock.patch.dict(os.environ, {"STANDIN_SD_SECONDS_PER_STEP": "0.05"}):
        async with in_process_worker(settings, LINUX) as worker:
            await worker.send(request("generate", params, "g"))
            while "method" in (message := await worker.receive(wait=30)):
                if message["params"]["phase"] == "sampling" and out.exists():
                    out.rmdir()
    assert message["error"]["code"] == -32008, message
    data = message["error"]["data"]
    assert data["path"].startswith(f"{out}/fox.0.") and data["path"].endswith(".final.png")
    assert data["reason"] == "No such file or directory"
    assert "could not be written: No such file or directory" in message["error"]["message"]
    assert standin.leftover_temp_entries() == []


def test_a_failed_write_leaves_no_image_of_the_request(tmp_path: Path) -> None:
    """A full disk at the second image: the first is removed too."""
    out = tmp_path / "out"
    out.mkdir()
    real_write = write_without_clobbering
    calls = []

    def full_disk_on_second(directory: Path, name: str, data: bytes) -> Path:
        calls.append(name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / name))
        return real_write(directory, name, data)

    rendered = Rendered(
        images=[
            RenderedImage(f"fox.{i}.1.final.png", i, procedural_png("fox", "", i), 512, 512)
            for i in range(2)
        ],
        warnings=[],
        model_id="m",
        backend="mock",
        sample_binary=None,
        resource_path=None,
        duration_ms=1,
        width=512,
        height=512,
    )
    params = GenerateParams(prompt="fox", count=2, output="path", output_dir=str(out))
    job = resolve_parameters(params, read_settings({}))
    with (
        mock.patch("worker.generation.write_without_clobbering", full_disk_on_second),
        pytest.raises(WorkerError) as raised,
    ):
        deliver(params, job, rendered, started=0.0)
    assert raised.value.code == -32008
    assert "No space left on device" in raised.value.message
    assert list(out.iterdir()) == []


async def test_a_scheduler_only_diffusers_has_is_unsupported_with_core_ml(
    standin: StandIn,
) -> None:
    response, notifications = await generate_once(standin, {"prompt": "fox", "scheduler": "euler"})
    assert response["error"]["code"] == -32001
    assert response["error"]["data"] == {"feature": "scheduler", "supported": ["pndm", "dpmpp"]}
    assert "diffusers backend" in response["error"]["message"]
    assert notifications == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "fox", "count": 9}, "count"),
        ({"prompt": "fox", "count": 0}, "count"),
        ({"prompt": "fox", "seed": -1}, "seed"),
        ({"prompt": "fox", "seed": 2**32}, "seed"),
        ({"prompt": "fox", "stepCount": 81}, "stepCount"),
        ({"prompt": "fox", "scheduler": "heun"}, "scheduler"),
        ({"prompt": "fox", "timeoutMs": 5}, "timeoutMs"),
        ({"prompt": "fox", "style": "noir"}, "style"),
        ({"prompt": "fox\u0000"}, "prompt"),
        ({"prompt": "x" * 20_001}, "prompt"),
        ({"prompt": "fox", "output": "path"}, "params"),
        ({"prompt": "fox", "output": "path", "outputDir": "relative/dir"}, "outputDir"),
        ({"prompt": "fox", "schema": "studio.local-image-generation.request.v2"}, "schema"),
    ],
)
async def test_invalid_params_name_the_field(
    standin: StandIn, params: dict[str, Any], field: str
) -> None:
    response, notifications = await generate_once(standin, params)
    assert response["error"]["code"] == -32602
    assert field in [e["field"] for e in response["error"]["data"]["errors"]]
    assert notifications == []


async def test_the_v1_request_schema_tag_is_accepted(standin: StandIn) -> None:
    response, _ = await generate_once(
        standin,
        {
            "schema": "studio.local-image-generation.request.v1",
            "prompt": "fox",
            "count": 1,
            "aspectRatio": "",
            "runId": "r",
            "inputImages": [],
        },
    )
    assert "result" in response


@pytest.mark.parametrize(
    ("params", "feature", "supported"),
    [({"aspectRatio": "16:9"}, "aspectRatio", ["1:1"])],
)
async def test_unsupported_controls_fail_loudly_before_anything_runs(
    standin: StandIn, params: dict[str, Any], feature: str, supported: list[str]
) -> None:
    response, notifications = await generate_once(standin, {"prompt": "fox", **params})
    assert response["error"]["code"] == -32001
    assert response["error"]["data"] == {"feature": feature, "supported": supported}
    assert notifications == []


async def test_missing_resources_are_backend_unavailable(standin: StandIn) -> None:
    shutil.rmtree(standin.resources / "Unet.mlmodelc")
    response, notifications = await generate_once(standin, {"prompt": "fox"})
    error = response["error"]
    assert error["code"] == -32002
    assert error["data"]["backend"] == "coreml_diffusion"
    assert error["data"]["missing"] == [str(standin.resources / "Unet.mlmodelc")]
    assert "apple/coreml-stable-diffusion-2-1-base-palettized" in error["data"]["installHint"]
    assert "Unet.mlmodelc" in error["message"]
    assert notifications == []


async def test_no_sampler_on_linux_is_backend_unavailable(tmp_path: Path) -> None:
    settings = read_settings({}, home=tmp_path)
    async with in_process_worker(settings, LINUX) as worker:
        response = await worker.call("generate", {"prompt": "fox"})
    assert response["error"]["code"] == -32002
    assert "macOS 13.1" in response["error"]["data"]["reason"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER", "euler"),
        ("SYSTEMSCULPT_LOCAL_IMAGEGEN_LOG_LEVEL", "verbose"),
        ("SYSTEMSCULPT_LOCAL_IMAGEGEN_MAX_REQUEST_BYTES", "abc"),
    ],
)
async def test_every_unusable_setting_is_config_invalid(
    standin: StandIn, variable: str, value: str
) -> None:
    response, progress = await generate_once(standin, {"prompt": "fox"}, {variable: value})
    assert response["error"]["code"] == -32007
    assert response["error"]["data"]["variable"] == variable
    assert response["error"]["data"]["value"] == value
    assert f"{variable}={value!r}" in response["error"]["message"]
    assert progress == []


async def test_unknown_backend_is_config_invalid(standin: StandIn) -> None:
    response, _ = await generate_once(
        standin, {"prompt": "fox"}, {"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "cloud"}
    )
    assert response["error"]["code"] == -32007
    assert response["error"]["data"]["variable"] == "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND"


async def test_a_failing_sampler_is_sampler_failed_with_exit_code_and_stderr(
    standin: StandIn,
) -> None:
    response, notifications = await generate_once(
        standin, {"prompt": "fox"}, {"STANDIN_SD_FAIL_AT_STEP": "2", "STANDIN_SD_EXIT_CODE": "3"}
    )
    error = response["error"]
    assert error["code"] == -32003
    assert error["data"]["exitCode"] == 3 and error["data"]["signal"] is None
    assert "MPSGraph execution error" in error["data"]["stderr"]
    assert "exited with code 3" in error["message"]
    assert [n["step"] for n in notifications if n["phase"] == "sampling"][-1] == 2


async def test_a_crashing_sampler_is_sampler_failed_with_the_signal(standin: StandIn) -> None:
    response, _ = await generate_once(standin, {"prompt": "fox"}, {"STANDIN_SD_CRASH_AT_STEP": "1"})
    error = response["error"]
    assert error["code"] == -32003
    assert error["data"]["exitCode"] is None and error["data"]["signal"] == "SIGTRAP"
    assert "Fatal error" in error["data"]["stderr"]


async def test_a_sampler_killed_from_outside_is_explained_by_the_signal(
    standin: StandIn,
) -> None:
    settings = read_settings(standin.env)
    with mock.patch.dict(os.environ, {"STANDIN_SD_SECONDS_PER_STEP": "0.1"}):
        async with in_process_worker(settings, LINUX) as worker:
            await worker.send(request("generate", {"prompt": "fox", "stepCount": 40}, "g"))
            while "method" in (message := await worker.receive(wait=30)):
                if message["params"]["phase"] == "sampling":
                    for pid in standin.live_processes():
                        os.kill(pid, signal.SIGKILL)
    error = message["error"]
    assert error["code"] == -32003
    assert error["data"]["signal"] == "SIGKILL" and error["data"]["exitCode"] is None
    assert error["message"].startswith(
        "StableDiffusionSample died from SIGKILL, sent from outside the worker"
    )
    assert error["message"].endswith(": it printed nothing on stderr")
    assert "Note: This can take a while" not in error["message"]


async def test_a_sampler_that_rejects_its_arguments_says_so(
    standin: StandIn, tmp_path: Path
) -> None:
    wrapper = tmp_path / "old-sampler"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{standin.env["SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN"]}" --bogus "$@"\n'
    )
    wrapper.chmod(0o755)
    response, _ = await generate_once(
        standin, {"prompt": "fox"}, {"SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(wrapper)}
    )
    assert response["error"]["code"] == -32003
    assert response["error"]["data"]["exitCode"] == 64
    assert "rejected its arguments" in response["error"]["message"]


async def test_a_sampler_that_cannot_start_is_sampler_failed(
    standin: StandIn, tmp_path: Path
) -> None:
    broken = tmp_path / "not-a-program"
    broken.write_bytes(b"\x7fELF garbage")
    broken.chmod(0o755)
    response, _ = await generate_once(
        standin, {"prompt": "fox"}, {"SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(broken)}
    )
    assert response["error"]["code"] == -32003
    assert "could not be started" in response["error"]["message"]


async def test_a_hanging_sampler_times_out(standin: StandIn) -> None:
    response, _ = await generate_once(
        standin, {"prompt": "fox", "timeoutMs": 1000}, {"STANDIN_SD_HANG": "1"}
    )
    assert response["error"]["code"] == -32004
    assert response["error"]["data"] == {"timeoutMs": 1000}
    assert "1000 ms" in response["error"]["message"]


async def test_a_timed_out_sampler_ignoring_sigterm_is_timed_out(standin: StandIn) -> None:
    response, _ = await generate_once(
        standin,
        {"prompt": "fox", "timeoutMs": 1000},
        {"STANDIN_SD_HANG": "1", "STANDIN_SD_IGNORE_SIGTERM": "1", "STANDIN_SD_GRANDCHILD": "1"},
    )
    assert response["error"]["code"] == -32004


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"STANDIN_SD_NO_IMAGE": "1"}, "wrote no PNG"),
        ({"STANDIN_SD_CORRUPT_PNG": "1"}, "is not a readable PNG"),
        ({"STANDIN_SD_IMAGE_SIZE": "256"}, "is 256x256, expected 512x512"),
        (
            {"STANDIN_SD_FLAG_IMAGES": "0", "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY": "false"},
            "withheld by the safety checker",
        ),
    ],
)
async def test_unusable_output_is_output_invalid(
    standin: StandIn, env: dict[str, str], reason: str
) -> None:
    response, _ = await generate_once(standin, {"prompt": "fox"}, env)
    assert response["error"]["code"] == -32005
    assert reason in response["error"]["data"]["reason"]


async def test_images_withheld_by_safety_become_warnings(standin: StandIn) -> None:
    response, _ = await generate_once(
        standin,
        {"prompt": "fox", "count": 3, "seed": 1},
        {"STANDIN_SD_FLAG_IMAGES": "1", "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY": "0"},
    )
    result = response["result"]
    assert [i["index"] for i in result["images"]] == [0, 2]
    assert result["warnings"] == ["Image 1 was withheld by the safety checker and is not returned."]


async def test_flooded_stderr_garbage_and_stray_children_do_not_break_a_job(
    standin: StandIn,
) -> None:
    response, _ = await generate_once(
        standin,
        {"prompt": "fox"},
        {
            "STANDIN_SD_STDERR_BYTES": str(4 << 20),
            "STANDIN_SD_FLOOD_BYTES": str(8 << 20),
            "STANDIN_SD_GARBAGE": "1",
            "STANDIN_SD_GRANDCHILD": "1",
        },
    )
    assert len(response["result"]["images"]) == 1


@pytest.mark.parametrize(
    "prompt",
    [
        # Brackets weigh words (removed for Core ML, with a warning); escaped, they are text.
        "a \"quoted\" 'fox' $\\(rm -rf /\\) `id` ; | & > out",
        "line one\nline two\r\n\tindented",
        "ünïcödé 狐狸 🦊 in snow",
        "--help",
        "-v --seed 3 leading dashes",
        " ".join(["very", "long", "prompt"] * 60),
        "AC/DC poster / ../../escape attempt",
        "trailing backslash \\",
    ],
)
async def test_unusual_prompts_reach_the_sampler_intact(standin: StandIn, prompt: str) -> None:
    response, _ = await generate_once(standin, {"prompt": prompt, "seed": 11})
    assert "result" in response, response
    png = _decode(response["result"]["images"][0])
    words = plain(prompt.strip())
    assert "(" not in prompt or words.count("(") == 1  # the escaped ones only
    assert json.loads(png.info["studio-imagegen"])["effective"]["prompt"] == words
    assert png.info["parameters"].startswith(words)


async def test_mock_backend_is_deterministic_and_shaped_like_core_ml() -> None:
    settings = read_settings({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"})
    async with in_process_worker(settings, LINUX) as worker:
        first, progress = await call_collecting(worker, {"prompt": "fox", "runId": "r", "count": 2})
        again, _ = await call_collecting(worker, {"prompt": "fox", "runId": "r", "count": 2})
        other, _ = await call_collecting(worker, {"prompt": "fox", "runId": "s", "count": 1})
    result = first["result"]
    assert result["modelId"] == "local/macos-procedural-v1"
    assert result["metadata"]["backend"] == "mock" and result["metadata"]["sampleBinary"] is None
    images = [_decode(i) for i in result["images"]]
    assert [i.size for i in images] == [(512, 512), (512, 512)]
    assert images[0].tobytes() != images[1].tobytes()
    assert [_decode(i).tobytes() for i in again["result"]["images"]] == [
        i.tobytes() for i in images
    ]
    assert _decode(other["result"]["images"][0]).tobytes() != images[0].tobytes()
    assert {n["phase"] for n in progress} == {"loading", "sampling", "saving"}
