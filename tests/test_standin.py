"""The stand-in behaves like StableDiffusionSample from the outside, as the reference says."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.resources import make_resource_dir
from fixtures.standin import STANDIN_SCRIPT


def _locations(tmp_path: Path) -> list[str]:
    """--resource-path (a fresh fake bundle) and --output-path (tmp_path) arguments."""
    resources = make_resource_dir(tmp_path / "res")
    return [f"--resource-path={resources}", f"--output-path={tmp_path}"]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(STANDIN_SCRIPT), *args],
        capture_output=True,
        env={**os.environ, **env},
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus", "x"], "Unknown option '--bogus'"),
        ([], "Missing expected argument '<prompt>'"),
        (["--step-count", "many", "x"], "invalid for '--step-count <step-count>'"),
        (["--negative-prompt", "-ugly", "x"], "Missing value for '--negative-prompt"),
        (["--scheduler", "euler", "x"], "invalid for '--scheduler <scheduler>'"),
        (["a", "b"], "Unexpected argument 'b'"),
    ],
)
def test_argument_errors_exit_64_before_loading(args: list[str], message: str) -> None:
    result = _run(args)
    assert result.returncode == 64
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert stderr.startswith("Error: ") and message in stderr.splitlines()[0]
    assert "USAGE: stable-diffusion-sample <prompt>" in stderr


def test_missing_resources_exit_1_with_error_on_stderr(tmp_path: Path) -> None:
    result = _run([f"--resource-path={tmp_path}", f"--output-path={tmp_path}", "--", "x"])
    assert result.returncode == 1
    assert b"TextEncoder.mlmodelc" in result.stderr
    assert result.stdout.startswith(b"Loading resources and creating pipeline\n")


@pytest.mark.parametrize(("scheduler", "total"), [("pndm", 4), ("dpmpp", 3)])
def test_lines_file_names_and_step_totals(tmp_path: Path, scheduler: str, total: int) -> None:
    args = [
        *_locations(tmp_path),
        "--step-count=3",
        "--image-count=2",
        "--seed=42",
        f"--scheduler={scheduler}",
        "--",
        "a red fox",
    ]
    result = _run(args, STANDIN_SD_SECONDS_PER_STEP="0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == [
        "Loading resources and creating pipeline",
        "(Note: This can take a while the first time using these resources)",
        "Sampling ...",
    ]
    steps = lines[3 : 3 + total]
    assert [line.split(" of ")[0] for line in steps] == [
        f"\x1b[1A\x1b[KStep {n}" for n in range(total)
    ]
    assert all(line.split(" of ")[1].startswith(f"{total}  [mean: ") for line in steps)
    assert lines[3 + total :] == [
        "Saved a_red_fox.0.42.final.png",
        "Saved a_red_fox.1.42.final.png",
    ]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "a_red_fox.0.42.final.png",
        "a_red_fox.1.42.final.png",
    ]


def _seconds_to_first_byte(tmp_path: Path, terminal: bool) -> float:
    """Run 4 steps of 0.1 s into a pipe or a terminal; how long until `Loading`'s `L` came."""
    reader, writer = pty.openpty() if terminal else os.pipe()
    process = subprocess.Popen(
        [
            sys.executable,
            str(STANDIN_SCRIPT),
            *_locations(tmp_path),
            "--step-count=4",
            "--",
            "x",
        ],
        stdout=writer,
        env={**os.environ, "STANDIN_SD_SECONDS_PER_STEP": "0.1"},
    )
    os.close(writer)
    started = time.monotonic()
    first = os.read(reader, 1)
    waited = time.monotonic() - started
    process.wait(30)
    os.close(reader)
    assert first == b"L"
    return waited


def test_stdout_is_block_buffered_on_a_pipe(tmp_path: Path) -> None:
    waited = _seconds_to_first_byte(tmp_path, terminal=False)
    assert waited >= 0.4, "output arrived before the run ended: the pipe was not buffered"


def test_stdout_is_line_buffered_on_a_terminal(tmp_path: Path) -> None:
    waited = _seconds_to_first_byte(tmp_path, terminal=True)
    assert waited < 0.4, "the first line waited for the run: the terminal was not line-buffered"


def test_safety_checker_withholds_flagged_images_only_when_safety_is_on(tmp_path: Path) -> None:
    base = [
        *_locations(tmp_path),
        "--step-count=2",
        "--image-count=2",
        "--seed=7",
    ]
    result = _run([*base, "--", "fox"], STANDIN_SD_FLAG_IMAGES="0")
    assert result.returncode == 0
    assert (
        b"Image 0 failed safety check and was not savedSaved fox.1.7.final.png\n" in result.stdout
    )
    assert [p.name for p in tmp_path.glob("*.png")] == ["fox.1.7.final.png"]
    result = _run([*base, "--disable-safety", "--", "fox"], STANDIN_SD_FLAG_IMAGES="0")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "fox.0.7.final.png",
        "fox.1.7.final.png",
    ]


def test_single_image_names_have_no_index_and_prompt_is_cut_at_75(tmp_path: Path) -> None:
    prompt = "word " * 30
    result = _run(
        [
            *_locations(tmp_path),
            "--step-count=2",
            "--seed=9",
            "--",
            prompt,
        ]
    )
    assert result.returncode == 0
    assert [p.name for p in tmp_path.glob("*.png")] == [
        prompt[:75].replace(" ", "_") + ".9.final.png"
    ]


def test_save_every_writes_intermediates_and_says_so_on_the_step_line(tmp_path: Path) -> None:
    args = [
        *_locations(tmp_path),
        "--step-count=3",
        "--save-every=2",
        "--seed=5",
        "--scheduler=dpmpp",
        "--",
        "fox",
    ]
    result = _run(args, STANDIN_SD_SECONDS_PER_STEP="0")
    assert result.returncode == 0
    steps = [line for line in result.stdout.decode().splitlines() if "Step " in line]
    assert [line.endswith(" saved 1 image") for line in steps] == [True, False, True]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "fox.5.0.png",
        "fox.5.2.png",
        "fox.5.final.png",
    ]


def _family_run(
    tmp_path: Path, bundle: Path, *flags: str, **env: str
) -> subprocess.CompletedProcess[bytes]:
    args = [f"--resource-path={bundle}", f"--output-path={tmp_path}", "--seed=7", *flags]
    return _run([*args, "--", "a red fox"], STANDIN_SD_SECONDS_PER_STEP="0", **env)


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_xl_runs_an_sdxl_bundle_at_its_size(tmp_path: Path) -> None:
    bundle = make_resource_dir(tmp_path / "xl", size=(1024, 1024), family="sdxl")
    result = _family_run(tmp_path, bundle, "--xl", "--step-count=2")
    assert result.returncode == 0, result.stderr
    assert _png_size(tmp_path / "a_red_fox.7.final.png") == (1024, 1024)


@pytest.mark.parametrize(
    ("family", "flag", "omit", "missing"),
    [
        ("sdxl", "--xl", "TextEncoder2.mlmodelc", "TextEncoder2.mlmodelc"),
        ("sdxl", "--xl", "Unet.mlmodelc", "Unet.mlmodelc"),
        ("sd3", "--sd3", "MultiModalDiffusionTransformer.mlmodelc", "MultiModalDiffusion"),
        ("sd3", "--sd3", "TextEncoder.mlmodelc", "TextEncoder.mlmodelc"),
    ],
)
def test_each_family_checks_its_own_files(
    tmp_path: Path, family: str, flag: str, omit: str, missing: str
) -> None:
    bundle = make_resource_dir(tmp_path / family, [omit], family=family)  # type: ignore[arg-type]
    result = _family_run(tmp_path, bundle, flag)
    assert result.returncode == 1
    assert f"The file {missing}".encode() in result.stderr


def test_xl_bundle_without_its_first_encoder_throws_at_sampling(tmp_path: Path) -> None:
    bundle = make_resource_dir(tmp_path / "xl", ["TextEncoder.mlmodelc"], family="sdxl")
    result = _family_run(tmp_path, bundle, "--xl")
    assert result.returncode == 1
    assert b"startingText2ImgWithoutTextEncoder" in result.stderr
    assert result.stdout.endswith(b"Sampling ...\n")


def test_an_xl_refiner_runs_text_to_image_quietly(tmp_path: Path) -> None:
    """What the worker refuses: the CLI makes a refiner's image from noise, no error."""
    bundle = make_resource_dir(tmp_path / "refiner", family="sdxl", refiner=True)
    result = _family_run(tmp_path, bundle, "--xl", "--step-count=2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a_red_fox.7.final.png").is_file()


def test_sd3_ignores_the_scheduler_and_prints_one_line_a_step(tmp_path: Path) -> None:
    bundle = make_resource_dir(tmp_path / "sd3", family="sd3")
    result = _family_run(tmp_path, bundle, "--sd3", "--scheduler=pndm", "--step-count=3")
    assert result.returncode == 0, result.stderr
    assert b"Step 2 of 3 " in result.stdout and b"of 4" not in result.stdout


def test_below_macos_14_xl_is_ignored_and_the_sd_pipeline_fails_at_the_first_step(
    tmp_path: Path,
) -> None:
    bundle = make_resource_dir(tmp_path / "xl", family="sdxl")
    result = _family_run(tmp_path, bundle, "--xl", STANDIN_SD_MACOS="13")
    assert result.returncode == 1
    assert b"Required input feature not passed" in result.stderr
    assert b"Step 0" not in result.stdout


def test_a_batch_two_unet_fails_without_guidance(tmp_path: Path) -> None:
    bundle = make_resource_dir(tmp_path / "sd2", family="sd2", unet_batch=2)
    failed = _family_run(tmp_path, bundle, "--guidance-scale=0")
    assert failed.returncode == 1
    assert b"(1 x 4 x 64 x 64) does not match the shape (2 x 4 x 64 x 64)" in failed.stderr
    single = make_resource_dir(tmp_path / "sd2-single", family="sd2", unet_batch=1)
    result = _family_run(tmp_path, single, "--guidance-scale=0", "--step-count=2")
    assert result.returncode == 0, result.stderr


# --- ControlNet ------------------------------------------------------------------------


def _controlled(tmp_path: Path, **options: object) -> list[str]:
    """Locations of a bundle with a Canny and a Depth ControlNet and the controlled UNet."""
    resources = make_resource_dir(
        tmp_path / "res",
        family="sd1",
        controlnets=("Canny", "Depth"),
        controlled_unet=True,
        **options,  # type: ignore[arg-type]
    )
    return [f"--resource-path={resources}", f"--output-path={tmp_path}"]


def _control_image(path: Path, size: tuple[int, int] = (512, 512)) -> str:
    from PIL import Image

    Image.new("RGB", size, "white").save(path)
    return str(path)


def test_controlnet_options_take_every_word_up_to_the_next_option(tmp_path: Path) -> None:
    image = _control_image(tmp_path / "edges.png")
    swallowed = _run(["--controlnet", "Canny", "a", "fox", "--controlnet-inputs", image])
    assert swallowed.returncode == 64
    assert b"Missing expected argument '<prompt>'" in swallowed.stderr
    ran = _run(
        [
            "--controlnet",
            "Canny",
            "--controlnet-inputs",
            image,
            *_controlled(tmp_path),
            "--step-count=2",
            "--seed=3",
            "--",
            "a fox",
        ]
    )
    assert ran.returncode == 0, ran.stderr
    plain = _run([*_controlled(tmp_path / "p"), "--step-count=2", "--seed=3", "--", "a fox"])
    assert plain.returncode == 0, plain.stderr
    steered = (tmp_path / "a_fox.3.final.png").read_bytes()
    assert steered != (tmp_path / "p" / "a_fox.3.final.png").read_bytes()  # the image steers


@pytest.mark.parametrize(
    ("names", "inputs", "extra", "said"),
    [
        (["Canny", "Depth"], 1, [], "Fatal error: Index out of range"),
        (["Canny"], 1, ["--guidance-scale=0.5"], "MultiArray shape (1 x 3 x 512 x 512)"),
        (["Pose"], 1, [], "Pose.mlmodelc could not be opened"),
        (["Canny"], 1, ["--xl"], "ControlNet is not supported for Stable Diffusion XL"),
    ],
)
def test_controlnet_runs_fail_as_the_real_sampler_fails(
    tmp_path: Path, names: list[str], inputs: int, extra: list[str], said: str
) -> None:
    images = [_control_image(tmp_path / f"{n}.png") for n in range(inputs)]
    result = _run(
        [
            "--controlnet",
            *names,
            "--controlnet-inputs",
            *images,
            *_controlled(tmp_path),
            *extra,
            "--step-count=2",
            "--",
            "a fox",
        ]
    )
    assert result.returncode != 0
    assert said in result.stderr.decode()


def test_a_controlnet_image_of_another_size_fails_at_the_first_step(tmp_path: Path) -> None:
    image = _control_image(tmp_path / "small.png", (256, 256))
    result = _run(
        [
            "--controlnet",
            "Canny",
            "--controlnet-inputs",
            image,
            *_controlled(tmp_path),
            "--step-count=2",
            "--",
            "a fox",
        ]
    )
    assert result.returncode == 1
    assert b"does not match the shape (2 x 3 x 512 x 512)" in result.stderr
    assert b"Sampling ..." in result.stdout


def test_a_bundle_without_the_controlled_unet_fails_to_load(tmp_path: Path) -> None:
    image = _control_image(tmp_path / "edges.png")
    locations = _controlled(tmp_path)
    (tmp_path / "res" / "ControlledUnet.mlmodelc" / "model.mil").unlink()
    (tmp_path / "res" / "ControlledUnet.mlmodelc").rmdir()
    result = _run(
        ["--controlnet", "Canny", "--controlnet-inputs", image, *locations, "--", "a fox"]
    )
    assert result.returncode == 1
    assert b"ControlledUnet.mlmodelc could not be opened" in result.stderr
