"""The worker as Studio runs it: a real subprocess spoken to over its stdin and stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from fixtures.proc import proc_status_kib
from tests.worker_clients import WorkerProcess, request, worker_environment

StartWorker = Callable[..., WorkerProcess]


def test_capabilities_then_end_of_input_exits_zero(worker_process: StartWorker) -> None:
    worker = worker_process()
    response = worker.call("capabilities", id_="caps")
    assert response["id"] == "caps"
    assert response["result"]["backend"]["id"] == "coreml_diffusion"
    worker.close_input()
    assert list(worker.messages()) == []
    assert worker.wait() == 0


def test_crlf_blank_lines_and_bad_bytes_over_real_stdio(worker_process: StartWorker) -> None:
    worker = worker_process()
    worker.send_raw(b"\r\n\n")
    worker.send_raw(json.dumps(request("capabilities", id_=1)).encode() + b"\r\n")
    assert worker.receive()["id"] == 1
    worker.send_raw(b'{"jsonrpc":"2.0","method":"caf\xe9","id":2}\n')
    error = worker.receive()
    assert error["error"]["code"] == -32700 and error["id"] is None
    worker.send_raw(b"[]\n")
    assert worker.receive()["error"]["code"] == -32600
    assert worker.call("capabilities", id_=3)["id"] == 3
    worker.close_input()
    assert worker.wait() == 0


def test_a_line_of_a_million_batch_members_is_one_answer_and_the_worker_goes_on(
    worker_process: StartWorker,
) -> None:
    worker = worker_process()
    worker.send_raw(b"[" + b",".join([b"{}"] * 1_000_000) + b"]\n")
    answer = worker.receive()
    assert answer["error"]["code"] == -32600 and "maxBatchMembers" in answer["error"]["message"]
    assert worker.call("capabilities", id_=2)["id"] == 2
    assert proc_status_kib(worker.pid, "VmHWM") < 200 * 1024, "the batch was held whole"
    worker.close_input()
    assert worker.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_shuts_down_gracefully_with_exit_code_zero(
    worker_process: StartWorker, signum: signal.Signals
) -> None:
    worker = worker_process()
    assert "result" in worker.call("capabilities")
    worker.signal(signum)
    assert worker.wait() == 0
    assert "Traceback" not in worker.stderr
    assert signum.name in worker.stderr


def test_a_closed_stdout_shuts_the_worker_down_quietly() -> None:
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        stdin=subprocess.PIPE,
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=worker_environment(),
    )
    os.close(write_end)
    os.close(read_end)
    assert process.stdin is not None
    try:
        process.stdin.write(json.dumps(request("capabilities")).encode() + b"\n")
        process.stdin.flush()
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdin.close()
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == 0
    assert b"Traceback" not in stderr
    assert b"closed stdout" in stderr


def test_nothing_but_the_protocol_reaches_stdout(tmp_path: object) -> None:
    """A stray print, a raw write to fd 1 and a child inheriting fd 1 all land on stderr."""
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        import worker.methods as methods

        original = methods.WorkerMethods.capabilities

        async def noisy(self, context, params):
            print("stray print")
            os.write(1, b"stray fd write\\n")
            subprocess.run(["sh", "-c", "echo stray child"], check=True)
            return await original(self, context, params)

        methods.WorkerMethods.capabilities = noisy
        from worker.cli import main
        sys.exit(main())
        """
    )
    worker = WorkerProcess([sys.executable, "-c", script], worker_environment())
    try:
        assert "result" in worker.call("capabilities", id_=1)
        worker.close_input()
        assert list(worker.messages()) == []
        assert worker.wait() == 0
    finally:
        worker.close()
    for line in worker.raw_lines:
        json.loads(line)
    for stray in ("stray print", "stray fd write", "stray child"):
        assert stray in worker.stderr


def test_logs_go_to_stderr_and_config_errors_are_reported_at_start(
    worker_process: StartWorker,
) -> None:
    worker = worker_process(
        {
            "SYSTEMSCULPT_LOCAL_IMAGEGEN_LOG_LEVEL": "debug",
            "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "many",
        }
    )
    caps = worker.call("capabilities")["result"]
    assert caps["configErrors"][0]["variable"] == "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT"
    worker.close_input()
    assert worker.wait() == 0
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT='many'" in worker.stderr
    assert "DEBUG" in worker.stderr
    for line in worker.raw_lines:
        assert json.loads(line)["jsonrpc"] == "2.0"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_an_oversized_line_is_discarded_without_being_held_in_memory(
    worker_process: StartWorker,
) -> None:
    worker = worker_process({"SYSTEMSCULPT_LOCAL_IMAGEGEN_MAX_REQUEST_BYTES": str(1 << 20)})
    assert "result" in worker.call("capabilities", id_=1)
    before = proc_status_kib(worker.pid, "VmHWM")
    chunk = b"x" * (1 << 20)
    worker.send_raw(b'{"jsonrpc":"2.0","method":"capabilities","id":"')
    for _ in range(96):
        worker.send_raw(chunk)
    worker.send_raw(b'"}\n')
    error = worker.receive(timeout=30)
    assert error["error"]["code"] == -32600 and "over the limit" in error["error"]["message"]
    assert worker.call("capabilities", id_=2)["id"] == 2
    grown_mib = (proc_status_kib(worker.pid, "VmHWM") - before) / 1024
    assert grown_mib < 32, f"peak memory grew by {grown_mib:.0f} MiB for a 96 MiB line"
    worker.close_input()
    assert worker.wait() == 0


def test_requests_are_answered_while_input_keeps_coming(worker_process: StartWorker) -> None:
    worker = worker_process()
    worker.send_raw(
        b"".join(json.dumps(request("capabilities", id_=i)).encode() + b"\n" for i in range(200))
    )
    started = time.monotonic()
    ids = sorted(worker.receive()["id"] for _ in range(200))
    assert ids == list(range(200))
    assert time.monotonic() - started < 30
    worker.close_input()
    assert worker.wait() == 0
