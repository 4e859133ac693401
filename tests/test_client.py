"""`studio-imagegen`, the terminal client, run as a person runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from tests.standin import StandIn
from tests.worker_clients import worker_environment

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


def test_capabilities_json_is_the_raw_result(standin: StandIn) -> None:
    result = _client(["capabilities", "--json"], standin.env)
    assert result.returncode == 0
    assert json.loads(result.stdout)["backend"]["available"] is True


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
    assert invalid.returncode == 2
    assert "error INVALID_PARAMS (-32602)" in invalid.stderr and "count:" in invalid.stderr

    failed = _client(
        ["generate", "fox standin:fail_at_step=0", "--out", str(tmp_path)], standin.env
    )
    assert failed.returncode == 5
    assert "error SAMPLER_FAILED (-32003)" in failed.stderr
    assert "MPSGraph execution error" in failed.stderr

    unavailable = _client(["generate", "fox", "--out", str(tmp_path)], {"HOME": str(tmp_path)})
    assert unavailable.returncode == 4
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


def test_the_worker_never_imports_the_client() -> None:
    code = (
        "import sys, worker.cli, worker.app; "
        "assert not [m for m in sys.modules if m == 'client' or m.startswith('client.')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=worker_environment())
