"""Names and text that reach people: the files written to `outputDir`, `fileName` in
results, progress messages, and what the terminal client prints. Control and
bidirectional characters from a prompt reach none of them, no name is hidden behind a
leading dot, and every name fits the file system, the no-overwrite suffix included;
ordinary prompts keep the names Studio graphs know."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.standin import StandIn, generate_once
from tests.worker_clients import in_process_worker, request, worker_environment
from worker.backends.registry import read_settings
from worker.file_names import NAME_MAX_BYTES, final_name, image_file_name
from worker.images import write_without_clobbering
from worker.text import UNSAFE_CHARACTERS

HOSTILE = "a \x1b]0;owned\x07fox \x1b[2J in snow \u202egnp.exe\u2066 \x85end"


@pytest.mark.parametrize(
    "prompt",
    ["a red fox in snow", "photo/of a fox", "狐 " * 40, "e\u0301 fox", "x" * 90, "a  b"],
)
def test_ordinary_prompts_keep_the_samplers_names(prompt: str) -> None:
    for count, index, strength in [(1, 0, None), (3, 2, 0.55)]:
        sampler = final_name(prompt, index=index, image_count=count, seed=7, strength=strength)
        delivered = image_file_name(
            prompt, index=index, image_count=count, seed=7, strength=strength
        )
        assert delivered == sampler.rsplit("/", 1)[-1]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("abc/", "image.9.final.png"),
        ("..", "image.9.final.png"),
        (".hidden fox", "hidden_fox.9.final.png"),
        ("/", "image.9.final.png"),
    ],
)
def test_no_name_starts_with_a_dot(prompt: str, expected: str) -> None:
    assert image_file_name(prompt, index=0, image_count=1, seed=9) == expected


def _clean(text: str) -> bool:
    return UNSAFE_CHARACTERS.search(text) is None


async def test_a_hostile_prompt_reaches_no_name_or_message_core_ml(
    standin: StandIn, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    params = {"prompt": HOSTILE, "seed": 4, "output": "path", "outputDir": str(out)}
    response, progress = await generate_once(standin, params)
    (image,) = response["result"]["images"]
    assert _clean(image["fileName"]) and _clean(image["path"])
    # Its "[" opens a prompt weight, which Core ML cannot weigh: the name has the words.
    assert image["fileName"].startswith("a__]0;owned_fox__2J_in_snow__gnp.exe")
    assert [entry.name for entry in out.iterdir()] == [image["fileName"]]
    assert all(_clean(note["message"]) for note in progress)
    assert any("Saved " in note["message"] for note in progress)


@pytest.mark.parametrize("prompt", ["abc/", ".."])
async def test_a_prompt_of_dots_or_ending_in_a_slash_makes_no_hidden_file(
    standin: StandIn, tmp_path: Path, prompt: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    params = {"prompt": prompt, "seed": 5, "output": "path", "outputDir": str(out)}
    response, _ = await generate_once(standin, params)
    assert "result" in response, response
    assert [entry.name for entry in out.iterdir()] == ["image.5.final.png"]


def test_the_no_overwrite_suffix_shortens_the_name_to_fit(tmp_path: Path) -> None:
    prompt_part = "é" * ((NAME_MAX_BYTES - len(".7.final.png")) // 2)
    name = f"{prompt_part}.7.final.png"
    assert len(name.encode()) > NAME_MAX_BYTES - 2  # no room for "-1"
    first = write_without_clobbering(tmp_path, name, b"one")
    second = write_without_clobbering(tmp_path, name, b"two")
    assert first.name == name
    assert second.name.endswith(".7.final-1.png") and second.name.startswith("éé")
    assert len(second.name.encode()) <= NAME_MAX_BYTES
    assert (first.read_bytes(), second.read_bytes()) == (b"one", b"two")


async def test_a_failed_write_names_the_file_it_tried_and_takes_back_the_previews(
    tmp_path: Path,
) -> None:
    """The second image's name is taken, so the worker tries `-1`, and that write fails:
    the error names the `-1` file, and none of the job's files (previews included) stays."""
    out = tmp_path / "out"
    out.mkdir()
    taken = out / "procedural.0.7.final.png"
    taken.write_bytes(b"someone else's")
    real_open = os.open

    def full_disk_for_new_images(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith("final-1.png"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, mode)

    settings = read_settings({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"})
    params = {
        "prompt": "fox",
        "seed": 7,
        "stepCount": 4,
        "previewEvery": 1,
        "output": "path",
        "outputDir": str(out),
    }
    with mock.patch("worker.images.os.open", full_disk_for_new_images):
        async with in_process_worker(settings) as worker:
            await worker.send(request("generate", params, "g"))
            previews = 0
            while "method" in (message := await worker.receive()):
                previews += message["method"] == "preview"
    assert previews > 0
    error = message["error"]
    assert error["code"] == -32008
    assert error["data"]["path"] == str(out / "procedural.0.7.final-1.png")
    assert "procedural.0.7.final-1.png could not be written" in error["message"]
    assert list(out.iterdir()) == [taken], "the previews were taken back"


async def test_a_name_too_long_for_the_folder_is_refused_before_running_mock(
    tmp_path: Path,
) -> None:
    """The mock's names do not carry the prompt, so the same prompt runs there: only a
    backend whose names would not fit refuses (the diffusers and Core ML tests show it)."""
    settings = read_settings({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"})
    params = {"prompt": "\U0001f98a" * 70, "output": "path", "outputDir": str(tmp_path)}
    async with in_process_worker(settings) as worker:
        response = await worker.call("generate", params)
    assert "result" in response, response


def test_the_terminal_client_prints_no_control_character(standin: StandIn, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = ["generate", HOSTILE, "--steps", "2", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "client.cli", *command],
        capture_output=True,
        text=True,
        env=worker_environment(standin.env),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout + result.stderr
    assert "\u202e" not in result.stdout + result.stderr
    assert _clean(result.stdout.replace("\n", ""))
