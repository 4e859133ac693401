"""The sampler's file names, computed as Swift computes them, never lead outside the job.

The stand-in names its files by Swift's rules (grapheme clusters, the name appended to
`--output-path` as a relative path), so each case below would write where the real
sampler writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fixtures.resources import make_resource_dir
from fixtures.standin import STANDIN_SCRIPT
from protocol.models import Scheduler
from tests.standin import StandIn, generate_once
from worker.backends.coreml.sampler.output_layout import output_layout
from worker.backends.coreml.sampler.schedule import schedule_problems, timestep_count
from worker.file_names import characters, final_name, name_prefix

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
FLAG_FR = "\U0001f1eb\U0001f1f7"
FOX = "\U0001f98a"


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("a" + "\u0301" * 70, 1),  # a letter with 70 combining marks
        (FAMILY, 1),  # a ZWJ emoji sequence
        (FLAG_FR * 3, 3),  # flags pair regional indicators
        ("\u0915\u094d\u0937\u093f", 1),  # an Indic conjunct (Unicode 15.1 rules)
        ("\r\n", 1),
        ("e\u0301 fox", 5),
    ],
)
def test_characters_are_extended_grapheme_clusters(text: str, count: int) -> None:
    assert len(characters(text)) == count


def test_the_prefix_counts_characters_and_replaces_only_lone_spaces() -> None:
    prompt = "a" + "\u0301" * 70 + " b" * 40
    assert name_prefix(prompt) == "a" + "\u0301" * 70 + "_b" * 37
    assert name_prefix(" \u0301x y") == " \u0301x_y"  # a space with a mark is a character


def test_final_names_follow_main_swift() -> None:
    assert final_name("a red fox", index=1, image_count=2, seed=42) == "a_red_fox.1.42.final.png"
    assert final_name("fox", index=0, image_count=1, seed=7, strength=0.55) == (
        "fox.str55.7.final.png"
    )
    # Float arithmetic, as Swift does it: 0.29 * 100 is 28.999... in Double, 29 in Float.
    assert final_name("fox", index=0, image_count=1, seed=7, strength=0.29).startswith("fox.str29")


def _run_standin(
    tmp_path: Path, *args: str, output: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The stand-in run directly, with a fresh bundle and `output` (else tmp_path)."""
    resources = make_resource_dir(tmp_path / "res")
    locations = [f"--resource-path={resources}", f"--output-path={output or tmp_path}"]
    return subprocess.run(
        [sys.executable, str(STANDIN_SCRIPT), *locations, *args],
        capture_output=True,
        timeout=30,
        check=False,
        env={**os.environ, "STANDIN_SD_SECONDS_PER_STEP": "0"},
    )


def _starting_image(tmp_path: Path) -> Path:
    """A PNG of the model's size, as the worker prepares a reference."""
    path = tmp_path / "start.png"
    Image.new("RGB", (512, 512), (40, 80, 120)).save(path)
    return path


def _escape_prompt() -> tuple[str, int]:
    """A prompt whose first 75 code points climb 10 levels but whose first 75 characters
    climb 15: cut by code points, the output path is nested too shallow."""
    prompt = "x/" + "a" + "\u0301" * 40 + "/" + "../" * 15 + "landing/" + "z" * 30
    by_code_points = prompt[:75].split("/")[:-1].count("..")
    return prompt, by_code_points


async def test_a_prompt_that_climbs_further_than_its_code_points_lands_inside_the_job(
    standin: StandIn, tmp_path: Path
) -> None:
    prompt, by_code_points = _escape_prompt()
    layout = output_layout(prompt, image_count=1, seed=3)
    assert (by_code_points, layout.climb) == (10, 15)
    # From <tmp>/studio-imagegen-*/out/d*10/x/á, 15 levels up is the test's own folder:
    # where the file would land if the output path were nested by code points.
    landing = tmp_path / "landing"
    landing.mkdir()
    response, _ = await generate_once(standin, {"prompt": prompt, "seed": 3})
    assert "result" in response, response
    assert response["result"]["images"][0]["fileName"] == "z" * 18 + ".3.final.png"
    assert list(landing.iterdir()) == []


async def test_a_leading_slash_is_relative_to_the_output_path(
    standin: StandIn, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    response, _ = await generate_once(standin, {"prompt": f"{target}/owned", "seed": 5})
    assert "result" in response, response
    assert list(target.iterdir()) == []


def test_the_standin_appends_names_as_relative_paths(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    result = _run_standin(tmp_path, "--step-count=2", "--", f"{target}/owned", output=out)
    # Like the real sampler, it does not create the folders a name implies.
    assert result.returncode == 1 and b"No such file or directory" in result.stderr
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    "prompt",
    [
        f"{FAMILY} family portrait/../../x",
        f"{FLAG_FR} poster/../y",
        f"photo/{FAMILY}/../../../z",
    ],
)
async def test_a_slash_near_characters_macos_versions_count_differently_is_refused(
    standin: StandIn, prompt: str
) -> None:
    response, progress = await generate_once(standin, {"prompt": prompt})
    assert response["error"]["code"] == -32602, response
    assert response["error"]["data"]["errors"][0]["field"] == "prompt"
    assert "remove the '/'" in response["error"]["message"]
    assert progress == []


async def test_emoji_without_a_slash_are_fine(standin: StandIn) -> None:
    response, _ = await generate_once(standin, {"prompt": f"{FAMILY} {FLAG_FR} {FOX} party"})
    assert "result" in response, response


async def test_a_file_name_over_255_bytes_is_refused_before_sampling(
    standin: StandIn, tmp_path: Path
) -> None:
    prompt = FOX * 60
    # The sampler would run every step, then fail to save.
    out = tmp_path / "out"
    out.mkdir()
    direct = _run_standin(tmp_path, "--step-count=2", "--seed=4000000000", "--", prompt, output=out)
    assert direct.returncode == 1 and b"File name too long" in direct.stderr
    assert b"Step 2 of 3" in direct.stdout  # after every step

    response, progress = await generate_once(standin, {"prompt": prompt, "seed": 4000000000})
    assert response["error"]["code"] == -32602, response
    message = response["error"]["message"]
    assert "a file name of 261 bytes, over the file system's limit of 255" in message
    assert progress == []
    # 75 CJK characters (3 bytes each) fit.
    response, _ = await generate_once(standin, {"prompt": "狐" * 80})
    assert "result" in response, response


async def test_one_pndm_step_is_refused_because_the_sampler_traps(
    standin: StandIn, tmp_path: Path
) -> None:
    direct = _run_standin(tmp_path, "--step-count=1", "--", "fox")
    assert direct.returncode == -signal.SIGTRAP
    assert b"Fatal error" in direct.stderr

    response, _ = await generate_once(standin, {"prompt": "fox", "stepCount": 1})
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["errors"] == [
        {"field": "stepCount", "message": schedule_problems(1, "pndm")[0][1]}
    ]
    response, _ = await generate_once(
        standin, {"prompt": "fox", "stepCount": 1, "scheduler": "dpmpp"}
    )
    assert "result" in response, response


@pytest.mark.parametrize(
    ("steps", "scheduler", "strength"),
    [(20, "dpmpp", 0.04), (5, "dpmpp", 0.1), (20, "pndm", -0.5), (20, "dpmpp", 0.0)],
)
def test_strengths_that_run_no_step_trap_and_are_named(
    tmp_path: Path, steps: int, scheduler: Scheduler, strength: float
) -> None:
    image = _starting_image(tmp_path)
    direct = _run_standin(
        tmp_path,
        f"--step-count={steps}",
        f"--scheduler={scheduler}",
        f"--image={image}",
        f"--strength={strength}",
        "--",
        "fox",
    )
    assert direct.returncode == -signal.SIGTRAP, direct.stderr
    assert [field for field, _ in schedule_problems(steps, scheduler, strength)] == ["strength"]


RUNNABLE = [
    (scheduler, steps, strength)
    for scheduler in ("pndm", "dpmpp")
    for steps in (2, 3, 7, 20, 50)
    for strength in (None, 0.35, 0.55, 0.75, 0.29, 1.0, 1.5)
    if not schedule_problems(steps, scheduler, strength)
]


@pytest.mark.parametrize(("scheduler", "steps", "strength"), RUNNABLE)
def test_the_step_total_matches_what_the_sampler_prints(
    tmp_path: Path, scheduler: Scheduler, steps: int, strength: float | None
) -> None:
    image = _starting_image(tmp_path)
    extra = [] if strength is None else [f"--image={image}", f"--strength={strength}"]
    direct = _run_standin(
        tmp_path, f"--step-count={steps}", f"--scheduler={scheduler}", *extra, "--", "fox"
    )
    assert direct.returncode == 0, direct.stderr
    total = timestep_count(steps, scheduler, strength)
    assert f"Step {total - 1} of {total} ".encode() in direct.stdout
    assert f"of {total + 1} ".encode() not in direct.stdout
