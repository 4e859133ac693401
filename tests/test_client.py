"""`studio-imagegen`, the terminal client, run as a person runs it."""

from __future__ import annotations

import io
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from fixtures.resources import make_resource_dir
from tests.standin import StandIn
from tests.worker_clients import REPO_ROOT, worker_environment
from worker.status_line import ERASE_LINE, StatusLine

CLIENT = [sys.executable, "-m", "client.cli"]


def _client(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENT, *args],
        capture_output=True,
        text=True,
        env=worker_environment(env),
        timeout=timeout,
        check=False,
    )


def test_capabilities_summary_says_why_the_backend_is_unavailable(tmp_path: Path) -> None:
    result = _client(["capabilities"], {"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "Backend    coreml_diffusion: NOT available" in result.stdout
    assert "macOS 13.1" in result.stdout
    assert "Fix        run the worker on a Mac" in result.stdout
    assert "studio-imagegen-worker install" in result.stdout
    assert "Limits     images 1..8 · steps 1..80" in result.stdout


def test_capabilities_summary_shows_the_diffusers_model_host(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    env = {
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(model),
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_IDLE_MS": "0",
    }
    result = _client(["capabilities"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Model      diffusers/my-model:auto" in lines
    assert "Model host not loaded (device auto, dtype auto) · last load - · unloads never" in lines
    assert f"Model path {model}" in lines
    schedulers = (
        "pndm, dpmpp, euler, euler_a, ddim, dpmpp_karras, euler_karras, euler_a_trailing, lcm"
    )
    assert f"schedulers {schedulers} · compute units - (not Core ML)" in result.stdout


def test_capabilities_json_is_the_raw_result(standin: StandIn) -> None:
    result = _client(["capabilities", "--json"], standin.env)
    assert result.returncode == 0
    assert json.loads(result.stdout)["backend"]["available"] is True


def test_models_lists_the_menu_and_generate_model_picks_one(
    standin: StandIn, tmp_path: Path
) -> None:
    make_resource_dir(standin.models / "sdxl-base", size=(1024, 1024), family="sdxl")
    make_resource_dir(standin.models / "half-xl", ["Unet.mlmodelc"], family="sdxl")
    (standin.models / "half-xl" / "UnetChunk1.mlmodelc").mkdir()  # one chunk of two
    listed = _client(["models"], standin.env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(
        line.startswith("* coreml_diffusion/resources") and "Stable Diffusion 2.x · 512x512" in line
        for line in lines
    )
    assert any(
        line.startswith("  coreml_diffusion/sdxl-base")
        and "Stable Diffusion XL · 1024x1024" in line
        for line in lines
    )
    assert any(line.startswith("- coreml_diffusion/half-xl") for line in lines)
    assert any("cannot run:" in line and "Unet.mlmodelc missing" in line for line in lines)
    as_json = json.loads(_client(["models", "--json"], standin.env).stdout)
    assert "coreml_diffusion/sdxl-base" in [model["id"] for model in as_json]

    out = tmp_path / "images"
    made = _client(
        [
            "generate",
            "fox",
            "--model",
            "coreml_diffusion/sdxl-base",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        standin.env,
    )
    assert made.returncode == 0, made.stderr
    (path,) = made.stdout.split()
    with Image.open(path) as image:
        assert image.size == (1024, 1024)
    refused = _client(["generate", "fox", "--model", "sdxl", "--out", str(out)], standin.env)
    assert refused.returncode != 0
    assert "coreml_diffusion/sdxl-base" in refused.stderr  # the usable ids are named


def test_generate_shows_progress_and_prints_the_image_paths(
    standin: StandIn, tmp_path: Path
) -> None:
    out = tmp_path / "images"
    result = _client(
        ["generate", "a red fox", "--count", "2", "--steps", "3", "--seed", "7", "--out", str(out)],
        standin.env,
    )
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert paths == [str(out / "a_red_fox.0.7.final.png"), str(out / "a_red_fox.1.7.final.png")]
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (512, 512)
    assert "sampling" in result.stderr and "4/4" in result.stderr
    assert "2 image(s)" in result.stderr and "seed 7" in result.stderr


def test_raw_shows_every_line_exchanged(standin: StandIn, tmp_path: Path) -> None:
    result = _client(
        ["--raw", "generate", "fox", "--steps", "2", "--out", str(tmp_path)], standin.env
    )
    assert result.returncode == 0
    sent = [line for line in result.stderr.splitlines() if line.startswith("-> ")]
    received = [line for line in result.stderr.splitlines() if line.startswith("<- ")]
    assert json.loads(sent[0][3:])["method"] == "generate"
    assert any('"method":"progress"' in line for line in received)
    assert "result" in json.loads(received[-1][3:])


def test_errors_show_name_message_hint_and_exit_by_kind(standin: StandIn, tmp_path: Path) -> None:
    invalid = _client(["generate", "fox", "--count", "9", "--out", str(tmp_path)], standin.env)
    assert invalid.returncode == 10
    assert "error INVALID_PARAMS (-32602)" in invalid.stderr and "count:" in invalid.stderr

    failed = _client(
        ["generate", "fox standin:fail_at_step=0", "--out", str(tmp_path)], standin.env
    )
    assert failed.returncode == 13
    assert "error SAMPLER_FAILED (-32003)" in failed.stderr
    assert "MPSGraph execution error" in failed.stderr

    unavailable = _client(["generate", "fox", "--out", str(tmp_path)], {"HOME": str(tmp_path)})
    assert unavailable.returncode == 12
    assert "error BACKEND_UNAVAILABLE (-32002)" in unavailable.stderr
    assert "fix: run the worker on a Mac" in unavailable.stderr


def test_ctrl_c_cancels_the_job_and_waits_for_the_answer(standin: StandIn, tmp_path: Path) -> None:
    out = tmp_path / "images"
    process = subprocess.Popen(
        [*CLIENT, "generate", "fox", "--steps", "60", "--out", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=worker_environment({**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.1"}),
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("sampling") and " 2/61" in line:
            break
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "cancelling..." in stderr
    assert "error CANCELLED (-32800)" in stderr
    assert time.monotonic() - started < 5
    assert stdout == ""
    assert list(out.iterdir()) == []


def test_a_second_ctrl_c_leaves_at_once_and_leaves_nothing_behind(standin: StandIn) -> None:
    """The sampler hangs and ignores SIGTERM, and the worker would wait 20 s before
    SIGKILL: the second Ctrl-C makes the worker exit at once, killing it."""
    env = {
        **standin.env,
        "SYSTEMSCULPT_LOCAL_DIFFUSION_KILL_GRACE_MS": "20000",
        "STANDIN_SD_HANG": "1",
        "STANDIN_SD_IGNORE_SIGTERM": "1",
    }
    process = subprocess.Popen(
        [*CLIENT, "generate", "fox", "--out", str(standin.tmp.parent / "images")],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=worker_environment(env),
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("loading") and "Loading resources" in line:
            break
    process.send_signal(signal.SIGINT)
    for line in process.stderr:
        if line.startswith("cancelling..."):
            break
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = process.communicate(timeout=20)
    assert time.monotonic() - started < 5
    assert process.returncode == 130
    assert "left without waiting" in stderr
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr
    deadline = time.monotonic() + 5
    while standin.live_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert standin.live_processes() == []
    assert standin.leftover_temp_entries() == []


def test_a_closed_stdout_is_not_a_traceback(standin: StandIn) -> None:
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"{shlex.join(CLIENT)} capabilities --json | head -1; "
            "echo status ${PIPESTATUS[0]} >&2",
        ],
        capture_output=True,
        text=True,
        env=worker_environment(standin.env),
        timeout=60,
        check=False,
    )
    assert result.stdout == "{\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    # 0 when the whole answer fit in the pipe before head left, 141 when it did not.
    assert result.stderr.splitlines()[-1] in ("status 0", "status 141")


def test_a_worker_that_exits_at_once_is_exit_70(tmp_path: Path) -> None:
    result = _client(["--worker", f"{sys.executable} -c pass", "capabilities"])
    assert result.returncode == 70
    assert "the worker exited" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_and_invalid_params_exit_differently(standin: StandIn, tmp_path: Path) -> None:
    usage = _client(["generate"], standin.env)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    invalid = _client(["generate", "fox", "--count", "0", "--out", str(tmp_path)], standin.env)
    assert invalid.returncode == 10


def test_generate_help_describes_every_option_with_its_default() -> None:
    result = _client(["generate", "--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option, words in [
        ("--count", "how many images (1 to 8) (default: 1)"),
        ("--steps", "denoising steps"),
        ("--scheduler", "sampler scheduler"),
        ("--out", "folder for the images (default:"),
        ("--seed", "derived from prompt and run"),
        ("--quality", "fast 14/7, balanced 20/7.5, high 32/8"),
    ]:
        assert option in text and words in text, option


def test_without_out_images_go_to_the_pictures_folder(standin: StandIn, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = _client(["generate", "fox", "--seed", "3"], {**standin.env, "HOME": str(home)})
    assert result.returncode == 0, result.stderr
    folder = home / "Pictures" / "studio-imagegen"
    assert result.stdout.split() == [str(folder / "fox.3.final.png")]
    assert f"written to {folder}" in result.stderr


def test_image_to_image_ratio_and_previews_from_the_terminal(
    standin: StandIn, tmp_path: Path
) -> None:
    reference = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (200, 30, 30)).save(reference)
    out = tmp_path / "images"
    result = _client(
        [
            "generate",
            "a fox",
            "--image",
            str(reference),
            "--influence",
            "strong",
            "--preview-every",
            "1",
            "--seed",
            "5",
            "--out",
            str(out),
        ],
        standin.env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / "a_fox.str35.5.final.png")]
    # 4 pndm steps at strength 0.35 run 2 timesteps: a preview after each
    assert f"2 preview(s) written to {out} (*.preview.png)" in result.stderr
    assert len(list(out.glob("*.preview.png"))) == 2
    unsupported = _client(["generate", "fox", "--ratio", "16:9", "--out", str(out)], standin.env)
    assert unsupported.returncode == 11
    assert "error UNSUPPORTED_FEATURE (-32001)" in unsupported.stderr
    assert "supported: 1:1" in unsupported.stderr


def test_inpaint_and_outpaint_from_the_terminal(tmp_path: Path) -> None:
    """On the mock backend: the mask keeps what is black, the outpaint grows the canvas."""
    env = {"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock", "SYSTEMSCULPT_LOCAL_MOCK_STEP_MS": "0"}
    source, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(source)
    painted = Image.new("L", (64, 48), 0)
    painted.paste(255, (0, 0, 16, 48))
    painted.save(mask)
    out = tmp_path / "images"
    common = ["generate", "a fox", "--image", str(source), "--seed", "2", "--out", str(out)]
    inpainted = _client([*common, "--mask", str(mask)], env)
    assert inpainted.returncode == 0, inpainted.stderr
    with Image.open(inpainted.stdout.split()[0]) as made:
        assert made.size == (64, 48)
        assert made.convert("RGB").crop((16, 0, 64, 48)).getcolors() == [(48 * 48, (200, 30, 30))]
    grown = _client([*common, "--outpaint", "0,32,0,0", "--mask-blur", "0"], env)
    assert grown.returncode == 0, grown.stderr
    with Image.open(grown.stdout.split()[0]) as made:
        assert made.size == (96, 48)
    bad = _client([*common, "--outpaint", "wide"], env)
    assert bad.returncode == 2 and "nor a ratio (16:9)" in bad.stderr


def test_controls_from_the_terminal(tmp_path: Path) -> None:
    """On the mock backend: a control at weight 0 changes nothing, at weight 1 it steers."""
    env = {"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock", "SYSTEMSCULPT_LOCAL_MOCK_STEP_MS": "0"}
    edges = tmp_path / "edges.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(edges)
    made = {}
    for name, extra in {
        "plain": [],
        "muted": ["--control", f"procedural-canny={edges}:0"],
        "steered": ["--control", f"procedural-canny={edges}"],
    }.items():
        out = tmp_path / name
        result = _client(
            ["generate", "a fox", "--seed", "2", "--size", "64x64", "--out", str(out), *extra], env
        )
        assert result.returncode == 0, result.stderr
        with Image.open(result.stdout.split()[0]) as image:
            made[name] = image.convert("RGB").tobytes()
    assert made["muted"] == made["plain"] != made["steered"]
    bad = _client(["generate", "a fox", "--control", "edges.png"], env)
    assert bad.returncode == 2 and "is not NAME=IMAGE[:WEIGHT]" in bad.stderr


def test_the_worker_never_imports_the_client() -> None:
    code = (
        "import sys, worker.cli, worker.app; "
        "assert not [m for m in sys.modules if m == 'client' or m.startswith('client.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=worker_environment())


def test_an_out_that_is_a_file_or_cannot_be_written_is_refused_before_any_worker(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "worker-started"
    worker = f"sh -c 'touch {marker}; exec {shlex.join(CLIENT[:1])} -m worker'"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out, said in [
        (a_file, "is a file, not a folder"),
        (a_file / "inside", "cannot take the images"),
        (Path("/proc/studio-imagegen-test"), "cannot take the images"),
    ]:
        result = _client(["--worker", worker, "generate", "fox", "--out", str(out)])
        assert result.returncode == 2, result.stderr
        assert f"--out {out} {said}" in result.stderr
        assert "Traceback" not in result.stderr
    assert not marker.exists(), "the worker was started before the folder was checked"


def test_a_command_that_answers_nothing_of_the_protocol_is_given_up_on() -> None:
    """`cat` sends our own request back; that is no answer, and the client says so."""
    started = time.monotonic()
    result = _client(["--worker", "cat", "--wait", "1", "capabilities"], timeout=30)
    assert result.returncode == 70
    assert "sent nothing of the protocol within 1 s" in result.stderr
    assert "it sent our own request back" in result.stderr
    assert time.monotonic() - started < 20


def test_the_workers_log_lines_go_above_the_progress_bar_not_through_it() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    line = StatusLine(terminal)
    line.show("sampling  ███  2/4")
    line.above("12:00:01 INFO studio-imagegen-worker: a line the worker logged")
    assert terminal.getvalue() == (
        f"{ERASE_LINE}sampling  ███  2/4"
        f"{ERASE_LINE}12:00:01 INFO studio-imagegen-worker: a line the worker logged\n"
        "sampling  ███  2/4"
    )


def test_the_workers_stderr_reaches_the_person_through_the_client(
    standin: StandIn, tmp_path: Path
) -> None:
    env = {**standin.env, "SYSTEMSCULPT_LOCAL_IMAGEGEN_LOG_LEVEL": "debug"}
    result = _client(["generate", "fox", "--steps", "2", "--out", str(tmp_path / "o")], env)
    assert result.returncode == 0, result.stderr
    logged = [line for line in result.stderr.splitlines() if "studio-imagegen-worker:" in line]
    assert any("sampler started" in line for line in logged)
    assert all(" DEBUG " in line or " INFO " in line for line in logged)


def test_generate_help_shows_each_default_once() -> None:
    result = _client(["generate", "--help"])
    assert result.returncode == 0
    assert "(default: None)" not in result.stdout and "(default: False)" not in result.stdout
    options = re.split(r"\n  (?=-)", result.stdout)
    for option in options:
        assert option.count("default") <= 1, option


def test_the_extra_pndm_step_is_explained_once(standin: StandIn, tmp_path: Path) -> None:
    out = str(tmp_path / "o")
    pndm = _client(["generate", "fox", "--steps", "3", "--out", out], standin.env)
    assert pndm.returncode == 0, pndm.stderr
    said = "the bar counted 4: the pndm scheduler runs one step more than the 3 asked"
    assert pndm.stderr.count(said) == 1
    dpmpp = _client(
        ["generate", "fox", "--steps", "3", "--scheduler", "dpmpp", "--out", out], standin.env
    )
    assert dpmpp.returncode == 0, dpmpp.stderr
    assert "the bar counted" not in dpmpp.stderr
    photo = str(REPO_ROOT / "fixtures" / "reference-photo.jpg")
    from_photo = _client(
        ["generate", "fox", "--image", photo, "--influence=strong", "--steps=20", "--out", out],
        standin.env,
    )
    assert from_photo.returncode == 0, from_photo.stderr
    said = (
        "the bar counted 8: from a reference at strength 0.35 the sampler runs that share of "
        "the 20 steps; the pndm scheduler runs one step more, to start its multistep method"
    )
    assert from_photo.stderr.count(said) == 1, from_photo.stderr
