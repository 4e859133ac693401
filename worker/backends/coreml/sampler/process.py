"""One run of the sampler as a supervised child process.

The child writes stdout into a pseudo terminal, so its `print`s arrive line by line (on a
pipe it block-buffers and progress would come all at once at the end). It gets a session
and process group of its own, so that a timeout, a cancel, or the end of the run can stop
every process it started. Stderr is drained all along; its tail is kept for errors.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pty
import signal
import subprocess
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream, Process

from worker.live import LiveSamplers, signal_group, signal_name

logger = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2_000
_STDERR_KEEP_BYTES = 64 * 1024
_DRAIN_SECONDS = 1.0
"""How long output may still trickle in once the process group is gone."""


@dataclass(frozen=True)
class SamplerExit:
    exit_code: int | None
    """None when the process died by a signal."""
    signal: str | None
    stderr_tail: str
    duration_ms: int
    timed_out: bool

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class SamplerStartError(Exception):
    """The sampler could not be started at all (not executable, wrong format, ...)."""


async def run_sampler(
    argv: Sequence[str],
    *,
    timeout_seconds: float,
    kill_grace_seconds: float,
    on_output: Callable[[bytes], None],
    live: LiveSamplers | None = None,
) -> SamplerExit:
    """Run the sampler to its end, a timeout, or the caller's cancellation.

    However it ends, no process of its group is left alive when this returns or raises.
    """
    master, slave = pty.openpty()
    try:
        tty.setraw(slave)  # no echo, no \r\n translation
        os.set_blocking(master, False)
        started = time.monotonic()
        try:
            process = await anyio.open_process(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=slave,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise SamplerStartError(f"{argv[0]}: {exc.strerror or exc}") from exc
        finally:
            os.close(slave)
        logger.debug("sampler started: pid %d", process.pid)
        live = live if live is not None else LiveSamplers()
        live.groups.add(process.pid)
        try:
            async with process:
                return await _supervise(
                    process, master, started, timeout_seconds, kill_grace_seconds, on_output
                )
        finally:
            live.groups.discard(process.pid)
    finally:
        os.close(master)


async def _supervise(
    process: Process,
    master: int,
    started: float,
    timeout_seconds: float,
    kill_grace_seconds: float,
    on_output: Callable[[bytes], None],
) -> SamplerExit:
    stderr = bytearray()
    timed_out = False
    try:
        async with anyio.create_task_group() as readers:
            readers.start_soon(_read_terminal, master, on_output)
            assert process.stderr is not None
            readers.start_soon(_read_stream, process.stderr, stderr)
            with anyio.move_on_after(timeout_seconds) as deadline:
                await process.wait()
            if deadline.cancelled_caught:
                timed_out = True
                logger.info("sampler timed out after %.1fs; stopping it", timeout_seconds)
                await stop_process_group(process, kill_grace_seconds)
            signal_group(process.pid, signal.SIGKILL)  # helpers it left behind
            readers.cancel_scope.deadline = anyio.current_time() + _DRAIN_SECONDS
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop_process_group(process, kill_grace_seconds)
        raise
    code = process.returncode
    assert code is not None
    return SamplerExit(
        exit_code=code if code >= 0 else None,
        signal=signal_name(-code) if code < 0 else None,
        stderr_tail=_tail(stderr),
        duration_ms=round((time.monotonic() - started) * 1000),
        timed_out=timed_out,
    )


async def stop_process_group(process: Process, grace_seconds: float) -> None:
    """SIGTERM to the whole group, SIGKILL after the grace (or at once for leftovers)."""
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(grace_seconds):
            await process.wait()
    signal_group(process.pid, signal.SIGKILL)
    await process.wait()


async def _read_terminal(master: int, on_output: Callable[[bytes], None]) -> None:
    while True:
        await anyio.wait_readable(master)
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # every writer closed its end of the terminal
                return
            raise
        if not data:
            return
        on_output(data)


async def _read_stream(stream: ByteReceiveStream, buffer: bytearray) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        while True:
            buffer += await stream.receive()
            if len(buffer) > 2 * _STDERR_KEEP_BYTES:
                del buffer[:-_STDERR_KEEP_BYTES]


def _tail(data: bytearray) -> str:
    text = bytes(data[-_STDERR_KEEP_BYTES:]).decode("utf-8", "replace").strip()
    return text[-STDERR_TAIL_CHARS:]
