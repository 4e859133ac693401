"""Shutdown and host failure over the real stdio: answered where possible, nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from tests.standin import StandIn
from tests.worker_clients import WorkerProcess, request, start_worker_process, worker_environment

StartWorker = Callable[..., WorkerProcess]
STUBBORN = {"STANDIN_SD_HANG": "1", "STANDIN_SD_IGNORE_SIGTERM": "1", "STANDIN_SD_GRANDCHILD": "1"}


def _start_busy_worker(
    standin: StandIn, worker_process: StartWorker, env: dict[str, str] | None = None
) -> WorkerProcess:
    """A worker with one stubborn job running and one waiting."""
    worker = worker_process({**standin.env, **STUBBORN, **(env or {})})
    worker.send(request("generate", {"prompt": "running"}, "running"))
    worker.send(request("generate", {"prompt": "waiting"}, "waiting"))
    seen: set[str] = set()
    while not {"sampling", "queued"} <= seen:
        message = worker.receive()
        seen.add(message.get("params", {}).get("phase", ""))
    return worker


def _answers(worker: WorkerProcess) -> dict[Any, dict[str, Any]]:
    answers: dict[Any, dict[str, Any]] = {}
    for message in worker.messages():
        if "method" not in message:
            assert message["id"] not in answers, "answered twice"
            answers[message["id"]] = message
    return answers


def test_end_of_input_cancels_every_job_answers_them_and_exits_in_time(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = _start_busy_worker(standin, worker_process)
    closed = time.monotonic()
    worker.close_input()
    answers = _answers(worker)
    assert worker.wait() == 0
    elapsed = time.monotonic() - closed
    assert elapsed < 0.3 + 1.0, f"shutdown took {elapsed:.2f}s (grace 0.3s + 1s allowed)"
    assert {id_: a["error"]["code"] for id_, a in answers.items()} == {
        "running": -32800,
        "waiting": -32800,
    }
    assert answers["running"]["error"]["data"] == {"reason": "the worker is shutting down"}
    assert standin.live_processes() == []
    assert standin.leftover_temp_entries() == []


def test_sigterm_cancels_and_exits_zero(standin: StandIn, worker_process: StartWorker) -> None:
    worker = _start_busy_worker(standin, worker_process)
    worker.signal(signal.SIGTERM)
    answers = _answers(worker)
    assert worker.wait() == 0
    assert {a["error"]["code"] for a in answers.values()} == {-32800}
    assert len(answers) == 2
    assert standin.live_processes() == []
    assert standin.leftover_temp_entries() == []


def test_a_second_sigint_exits_at_once_and_still_kills_the_samplers(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = _start_busy_worker(
        standin, worker_process, {"SYSTEMSCULPT_LOCAL_DIFFUSION_KILL_GRACE_MS": "20000"}
    )
    worker.signal(signal.SIGINT)
    time.sleep(0.3)
    assert worker.returncode is None  # still in its 20 s grace
    interrupted = time.monotonic()
    worker.signal(signal.SIGINT)
    assert worker.wait() == 130
    assert time.monotonic() - interrupted < 2
    assert standin.live_processes() == []
    assert standin.leftover_temp_entries() == []


def test_a_host_that_closes_stdout_mid_job_takes_the_sampler_down(standin: StandIn) -> None:
    read_end, write_end = os.pipe()
    env = worker_environment({**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.05"})
    process = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        stdin=subprocess.PIPE,
        stdout=write_end,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(write_end)
    assert process.stdin is not None
    try:
        process.stdin.write(
            json.dumps(request("generate", {"prompt": "fox", "stepCount": 60}, 1)).encode() + b"\n"
        )
        process.stdin.flush()
        with os.fdopen(read_end, "rb") as stdout:
            stdout.readline()  # the first progress line: the job is under way
        # stdout is closed now; the next progress line breaks the pipe
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdin.close()
    assert standin.live_processes() == []
    assert standin.leftover_temp_entries() == []


def test_finish_on_eof_answers_every_job_piped_in_then_exits_zero(
    standin: StandIn, worker_process: StartWorker
) -> None:
    """`printf '<generate>\\n<generate>\\n' | studio-imagegen-worker --finish-on-eof`."""
    worker = worker_process(
        {**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.05"},
        args=[sys.executable, "-m", "worker", "--finish-on-eof"],
    )
    for name in ("first", "second"):
        worker.send(request("generate", {"prompt": name, "stepCount": 3}, name))
    worker.close_input()
    answers = _answers(worker)
    assert set(answers) == {"first", "second"}
    assert all("result" in answer for answer in answers.values()), answers
    assert worker.wait(30) == 0
    assert standin.live_processes() == [] and standin.leftover_temp_entries() == []


def test_finish_on_eof_still_stops_on_sigterm(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process(
        {**standin.env, "STANDIN_SD_HANG": "1"},
        args=[sys.executable, "-m", "worker", "serve", "--finish-on-eof"],
    )
    worker.send(request("generate", {"prompt": "fox"}, "hanging"))
    while worker.receive().get("params", {}).get("phase") != "sampling":
        pass
    worker.close_input()
    time.sleep(0.3)
    assert worker.returncode is None  # still finishing its job
    worker.signal(signal.SIGTERM)
    answers = _answers(worker)
    assert answers["hanging"]["error"]["code"] == -32800
    assert worker.wait(10) == 0


def test_a_person_at_a_terminal_is_told_how_to_use_it() -> None:
    """stdin a terminal: a banner on stderr, nothing on stdout; Ctrl-D ends it."""
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_environment({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"}),
    )
    os.close(terminal)
    try:
        assert process.stderr is not None
        banner = process.stderr.readline().decode()
        assert banner.startswith("studio-imagegen-worker ") and "is ready" in banner
        os.write(controller, b'{"jsonrpc":"2.0","id":1,"method":"capabilities"}\n')
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["id"] == 1
        os.write(controller, b"\x04")  # Ctrl-D
        assert process.wait(10) == 0
        rest = process.stderr.read().decode()
        assert "Ctrl-D ends the input" in rest and "Ctrl-C stops" in rest
        assert process.stdout.read() == b""
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_a_ctrl_c_while_the_worker_starts_exits_130_without_a_traceback() -> None:
    """The command's first module makes a Ctrl-C an exit, before the worker is imported:
    here one arrives right after it, while the rest is still loading."""
    code = (
        "import os, signal\n"
        "import worker.entry\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "import worker.cli\n"
        "print('went on after the Ctrl-C')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=worker_environment(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 130, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_two_quick_ctrl_cs_end_the_worker_by_exit_code_never_by_the_signal() -> None:
    """Wherever the second lands (during the shutdown the first began, or after it),
    the worker exits 0 or 130 by itself, with no traceback."""
    for attempt in range(4):
        worker = start_worker_process()
        try:
            assert "result" in worker.call("capabilities")
            worker.signal(signal.SIGINT)
            if attempt:
                time.sleep(0.05 * attempt)  # spreads the second over the shutdown's phases
            worker.signal(signal.SIGINT)
            code = worker.wait()
        finally:
            worker.close()
        assert code in (0, 130), code
        assert "Traceback" not in worker.stderr
