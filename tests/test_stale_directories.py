"""A worker killed without a chance to clean up (SIGKILL) leaves its temp directories;
the next worker to start removes those whose process is gone, and nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from tests.standin import StandIn
from tests.worker_clients import WorkerProcess, request, start_worker_process
from worker.scratch import sweep_stale


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_directories_of_processes_that_are_gone_are_swept(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale_job = tmp_path / f"studio-imagegen-{dead}-a1b2c3d4"
    stale_host = tmp_path / f"studio-imagegen-host-{dead}-e5f6g7h8"
    live = tmp_path / f"studio-imagegen-{os.getpid()}-aaaaaaaa"
    unowned = tmp_path / "studio-imagegen-zz9x8y7w"  # no owner in its name: not ours to judge
    other = tmp_path / f"someone-else-{dead}-x"
    for directory in (stale_job, stale_host, live, unowned, other):
        directory.mkdir()
        (directory / "file").write_bytes(b"x")
    a_file = tmp_path / f"studio-imagegen-{dead}-file"
    a_file.write_bytes(b"not a directory")
    removed = sweep_stale(tmp_path)
    assert sorted(removed) == sorted([stale_job, stale_host])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, unowned.name, other.name, a_file.name]
    )


def test_a_worker_killed_mid_job_leaves_nothing_once_the_next_one_starts(
    standin: StandIn,
) -> None:
    env = {**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.2"}
    killed = start_worker_process(env)
    try:
        killed.send(request("generate", {"prompt": "fox", "stepCount": 40}, "g"))
        while killed.receive(30).get("params", {}).get("phase") != "sampling":
            pass
        left = standin.leftover_temp_entries()
        assert left and all(name.startswith(f"studio-imagegen-{killed.pid}-") for name in left)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
    finally:
        killed.close()
    for pid in standin.live_processes():  # the orphaned sampler: not what this test is about
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert standin.leftover_temp_entries() == left
    fresh: WorkerProcess = start_worker_process(env)
    try:
        assert "result" in fresh.call("capabilities")
        assert standin.leftover_temp_entries() == []
    finally:
        fresh.close()
