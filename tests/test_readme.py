"""Every command in the README runs as written on a fresh Linux machine, or the table
below says why it is not run here. A command added to the README without an entry here
fails the test, so the README cannot drift from what works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.diffusers_setup import require_extra
from tests.standin import StandIn
from tests.worker_clients import REPO_ROOT, in_process_worker, worker_environment
from worker.backends.registry import read_settings

README = REPO_ROOT / "README.md"
NOT_RUN = "not run"
EXPECTED: dict[str, int | str] = {
    # command (its comment dropped): exit status on this Linux machine, or why it is not run
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen-worker": NOT_RUN
    + ": .ci/run makes this very environment from a clean checkout; the worker part is the "
    "next entry",
    ".venv/bin/python -m pytest": NOT_RUN + ": it is the run this test is part of",
    ".venv/bin/studio-imagegen-worker doctor": 1,
    ".venv/bin/studio-imagegen-worker doctor --json": 1,
    ".venv/bin/studio-imagegen-worker install": 2,
    ".venv/bin/studio-imagegen-worker install --verify": 1,
    ".venv/bin/studio-imagegen capabilities": 0,
    ".venv/bin/studio-imagegen capabilities --json": 0,
    ".venv/bin/studio-imagegen models": 0,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen generate "
    '"a red fox in snow" --count 2 --seed 7': 0,
    'SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen --raw generate "a fox"': 0,
    ".venv/bin/studio-imagegen generate --help": 0,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen generate "
    '"a fox in the style of this photo" --image fixtures/reference-photo.jpg '
    "--influence strong": 0,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen generate "
    '"a fox on a beach" --ratio 16:9 --quality fast': 0,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen generate "
    '"a fox" --steps 20 --preview-every 5': 0,
    'printf \'%s\\n\' \'{"jsonrpc":"2.0","id":1,"method":"generate","params":'
    '{"prompt":"a red fox"}}\' | SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock '
    ".venv/bin/studio-imagegen-worker --finish-on-eof": 0,
    'eval "$(.venv/bin/python -m fixtures.standin "${TMPDIR:-/tmp}/sd-standin")"': 0,
    "STANDIN_SD_SECONDS_PER_STEP=0.2 .venv/bin/studio-imagegen-worker": 0,
    "STANDIN_SD_SECONDS_PER_STEP=0.2 .venv/bin/studio-imagegen generate "
    '"a red fox in snow" --steps 8': 0,
    ".venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu": NOT_RUN
    + ": that index is not reachable here; this machine's pip takes torch==2.13.0, the CPU "
    "build, from its own disk (as .ci/run does), and the next line then finds it installed",
    # With torch there already, the extra installs without downloading torch again.
    ".venv/bin/pip install -e '.[diffusers]'": 0,
    ".venv/bin/studio-imagegen-worker install --backend diffusers": NOT_RUN
    + ": it downloads gigabytes from the Hugging Face hub, which is not reachable here; "
    "tests/test_diffusers_provision.py runs it against a local stand-in of the hub",
    # No model in a fresh HOME: -32002, with what to install (exit code 12).
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=diffusers .venv/bin/studio-imagegen generate "
    '"a red fox in snow"': 12,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=diffusers SYSTEMSCULPT_LOCAL_DIFFUSERS_DEVICE=mps "
    '.venv/bin/studio-imagegen generate "a red fox in snow"': 12,
    'eval "$(.venv/bin/python -m fixtures.tiny_diffusers "${TMPDIR:-/tmp}/tiny-sd")"': 0,
    '.venv/bin/studio-imagegen generate "a red fox in snow" --count 2 --steps 8 --ratio 16:9 '
    "--scheduler euler_a": 0,
    'eval "$(.venv/bin/python -m fixtures.tiny_diffusers --family sdxl '
    '"${TMPDIR:-/tmp}/tiny-sdxl")"': 0,
    '.venv/bin/studio-imagegen generate "a red fox" --model diffusers/tiny-sdxl --steps 1 '
    "--scheduler euler_a_trailing --guidance 0": 0,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen generate "
    '"a fox" --image fixtures/reference-photo.jpg --mask fixtures/reference-mask.png '
    "--mask-blur 8": 0,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen generate "
    '"a wide beach" --image fixtures/reference-photo.jpg --outpaint 16:9': 0,
    "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen generate "
    '"a fox" --control procedural-canny=fixtures/reference-mask.png:0.8': 0,
    ".venv/bin/python -m bench": NOT_RUN
    + ": the full run takes minutes; tests/test_bench.py runs every suite with --smoke",
}


def readme_commands() -> list[tuple[int, str]]:
    """(block number, command) for each line of each ```sh block, comments dropped."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    commands = []
    for number, block in enumerate(blocks):
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command:
                commands.append((number, command))
    return commands


ALSO_RUN = [(0, "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=mock .venv/bin/studio-imagegen-worker")]
"""Parts of commands that are not run whole: the worker that the first one starts."""


def test_every_readme_command_has_an_expectation() -> None:
    assert [command for _, command in readme_commands()] == list(EXPECTED)


def _runnable() -> list[tuple[int, str]]:
    return ALSO_RUN + [
        (block, command)
        for block, command in readme_commands()
        if not str(EXPECTED[command]).startswith(NOT_RUN)
    ]


@pytest.mark.parametrize(("block", "command"), _runnable(), ids=lambda item: str(item)[:60])
def test_the_readme_command_works_as_written(
    block: int, command: str, tmp_path: Path, standin: StandIn
) -> None:
    """In the checkout, a fresh HOME and TMPDIR, no SYSTEMSCULPT_* of the caller's, stdin
    empty (a host that sent nothing), earlier `eval` lines of the same block first."""
    prelude = [c for n, c in readme_commands() if n == block and c.startswith("eval ")]
    if any("tiny_diffusers" in line or "[diffusers]" in line for line in [*prelude, command]):
        require_extra()  # without torch, the extra's line would fetch a CUDA build
    script = "\n".join([*(p for p in prelude if p != command), command])
    home = tmp_path / "home"
    home.mkdir()
    env = worker_environment({"HOME": str(home), "TMPDIR": str(standin.tmp.parent / "t")})
    (standin.tmp.parent / "t").mkdir()
    env.pop("XDG_PICTURES_DIR", None)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    expected = EXPECTED.get(command, 0)
    assert result.returncode == expected, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    makes_images = "studio-imagegen generate" in command or "--raw generate" in command
    if makes_images and "--help" not in command and expected == 0:
        pictures = home / "Pictures" / "studio-imagegen"
        assert sorted(p.name for p in pictures.iterdir()), result.stderr
    if not command.startswith(".venv/bin/pip "):  # pip keeps its caches in HOME
        assert os.listdir(home) in ([], ["Pictures"])


TIMING = frozenset({"elapsedMs", "durationMs", "totalMs"})
"""What differs from run to run; the README's figures for these are examples."""


def _shown(line: str) -> dict[str, Any]:
    """A README answer line as JSON: `{...}` is any object, `,...` stands for more keys."""
    shown: dict[str, Any] = json.loads(line.replace("{...}", "{}").replace(",...}", "}"))
    return shown


def _matches(shown: object, real: object, path: str = "") -> list[str]:
    """Where the README's answer says other than the worker's (what it leaves out aside)."""
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{path}: not an object"]
        found = []
        for key, value in shown.items():
            if key not in real:
                found.append(f"{path}.{key}: not in the answer")
            elif key not in TIMING:
                found += _matches(value, real[key], f"{path}.{key}")
        return found
    if isinstance(shown, list):
        if not isinstance(real, list) or len(shown) != len(real):
            return [f"{path}: {len(shown)} items shown, the answer has another number"]
        return [
            d
            for i, (s, r) in enumerate(zip(shown, real, strict=True))
            for d in _matches(s, r, f"{path}.{i}")
        ]
    if isinstance(shown, str) and shown.endswith("...") and isinstance(real, str):
        return [] if real.startswith(shown[:-3]) else [f"{path}: {real[:40]!r} is not {shown!r}"]
    return [] if shown == real else [f"{path}: the README says {shown!r}, the worker {real!r}"]


async def test_the_session_by_hand_shows_what_the_worker_answers() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## A session by hand") :]
    asked, answered = re.findall(r"```json\n(.*?)```", section, re.S)[:2]
    shown = [_shown(line) for line in answered.splitlines() if line.strip() != "..."]
    settings = read_settings({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"})
    real: list[dict[str, Any]] = []
    async with in_process_worker(settings) as worker:
        for line in asked.splitlines():
            await worker.send(json.loads(line))
            while "method" in (message := await worker.receive()):
                real.append(message)
            real.append(message)
    answers = [m for m in real if "method" not in m]
    notifications = [m for m in real if "method" in m]
    shown_answers = [m for m in shown if "method" not in m]
    shown_notifications = [m for m in shown if "method" in m]
    differences = [
        *(d for s, r in zip(shown_answers, answers, strict=True) for d in _matches(s, r)),
        *(
            d
            for s, r in zip(shown_notifications, notifications, strict=False)
            for d in _matches(s, r)
        ),
    ]
    assert differences == []


def test_the_stand_in_section_says_how_to_leave_the_worker() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The sampler path without a Mac") :]
    section = section[: section.index("\n## ")]
    assert "Ctrl-D" in section


def test_the_default_test_run_says_why_tests_were_skipped(tmp_path: Path) -> None:
    """The project's pytest settings print each skip's reason in the summary."""
    (tmp_path / "test_skipping.py").write_text(
        "import pytest\n\n\ndef test_it():\n"
        "    pytest.skip('the reason, and the command that fixes it')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO_ROOT / "pyproject.toml"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert "SKIPPED [1]" in result.stdout
    assert "the reason, and the command that fixes it" in result.stdout
