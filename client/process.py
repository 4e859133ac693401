"""The worker as a child process, as Studio runs it, with a session on its stdio.

Closing never orphans anything: the worker is asked to stop the way it understands
(end of input, then SIGTERM, then a second SIGINT for its fast exit, which kills its
samplers and removes their directories) and only then killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import Process

from client.session import RawLog, WorkerSession

CLOSE_SECONDS = 10.0
"""How long a worker may take to exit after its input ends (it cancels its jobs first)."""
ESCALATE_SECONDS = 2.0


class WorkerProcess:
    """A running worker and the session that talks to it."""

    def __init__(
        self,
        process: Process,
        session: WorkerSession,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> None:
        self.process = process
        self.session = session
        self._stderr = bytearray()
        self._on_stderr_line = on_stderr_line

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def stderr(self) -> str:
        """What the worker wrote on stderr so far (when it was captured)."""
        return self._stderr.decode("utf-8", "replace")

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)

    async def wait(self) -> int:
        return await self.process.wait()

    async def interrupt_twice(self) -> None:
        """What a person's second Ctrl-C means: the worker's own fast exit."""
        self.signal(signal.SIGINT)
        await anyio.sleep(0.05)  # the first one starts the graceful stop
        self.signal(signal.SIGINT)

    async def close(self, grace_seconds: float = CLOSE_SECONDS) -> int:
        """End the input and wait; then SIGTERM, the fast exit, and SIGKILL, in turn."""
        await self.session.close_input()
        with anyio.move_on_after(grace_seconds):
            return await self.process.wait()
        for escalate in (self._terminate, self.interrupt_twice, self._kill):
            await escalate()
            with anyio.move_on_after(ESCALATE_SECONDS):
                return await self.process.wait()
        return await self.process.wait()

    async def _terminate(self) -> None:
        self.signal(signal.SIGTERM)

    async def _kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                chunk = await self.process.stderr.receive()
                if self._on_stderr_line is None:
                    self._stderr += chunk
                    continue
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self._on_stderr_line(line.decode("utf-8", "replace").rstrip("\r"))
        if pending and self._on_stderr_line is not None:
            self._on_stderr_line(pending.decode("utf-8", "replace"))


@asynccontextmanager
async def open_worker(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    raw_log: RawLog | None = None,
    keep_messages: bool = False,
    capture_stderr: bool = False,
    on_stderr_line: Callable[[str], None] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[WorkerProcess]:
    """Start the worker, read its output for the block's lifetime, close it at the end.

    `env` is the whole environment of the child (None: this process's). The worker gets a
    session of its own, so a Ctrl-C at the terminal reaches only the client, which decides
    what to tell the worker. Its stderr is kept (`capture_stderr`) or handed over line by
    line (`on_stderr_line`), else shared with this process.
    """
    capture_stderr = capture_stderr or on_stderr_line is not None
    process = await anyio.open_process(
        list(command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stdin is not None
    session = WorkerSession(
        process.stdout, process.stdin, raw_log=raw_log, keep_messages=keep_messages
    )
    worker = WorkerProcess(process, session, on_stderr_line)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(session.run)
            if capture_stderr:
                group.start_soon(worker._drain_stderr)
            try:
                yield worker
            finally:
                with anyio.CancelScope(shield=True):
                    await worker.close()
                group.cancel_scope.cancel()
    finally:
        session.release()
