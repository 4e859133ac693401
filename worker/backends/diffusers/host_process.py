"""The worker's handle on one model host process: start it, talk to it, end it.

The host runs in a session and process group of its own, like the sampler, so that a
kill reaches whatever it started. Its stderr goes to a log file in a private directory,
read back for the cause when it dies; the directory goes when the host does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from worker.backends.diffusers.host import messages
from worker.live import LiveSamplers, signal_group, signal_name
from worker.scratch import make_directory

logger = logging.getLogger(__name__)

LOG_TAIL_CHARS = 2_000
LOG_KEEP_BYTES = 1024 * 1024
"""A host's log is cut to its last half of this when it grows past it."""
HOST_MODULE = "worker.backends.diffusers.host"
HOST_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",  # generating never downloads; `install` does
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


class HostGone(Exception):
    """The host's output ended: it exited or was killed. Says how, in words, with the
    exit code or signal and the tail of its log for the error's data."""

    def __init__(
        self,
        how: str,
        exit_code: int | None = None,
        signal: str | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(f"{how}: {log_tail}" if log_tail else how)
        self.exit_code = exit_code
        self.signal = signal
        self.log_tail = log_tail


def host_command(
    model: Path,
    label: str,
    device: str,
    dtype: str,
    idle_ms: int,
    safety: bool,
    family: str | None = None,
    refiner: bool = False,
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        HOST_MODULE,
        "--model",
        str(model),
        "--label",
        label,
        "--device",
        device,
        "--dtype",
        dtype,
        "--idle-ms",
        str(idle_ms),
    ]
    if family is not None:
        command += ["--family", family]
    if refiner:
        command.append("--refiner")
    return [*command, "--safety"] if safety else command


class ModelHostProcess:
    """One running host. Not safe for two jobs at once; the backend runs one at a time."""

    def __init__(self, process: Process, directory: Path, live: LiveSamplers) -> None:
        self._process = process
        self._directory = directory
        self._live = live
        assert process.stdout is not None
        self._replies = BufferedByteReceiveStream(process.stdout)

    @classmethod
    async def start(cls, argv: Sequence[str], live: LiveSamplers) -> ModelHostProcess:
        directory = make_directory("host")
        live.directories.add(directory)
        # Appending: trim_log can cut the file while the host keeps writing at its end.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        log = os.open(directory / "host.log", flags, 0o600)
        try:
            process = await anyio.open_process(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                # Its temp files (torch's caches among them) go when the host does.
                env={**os.environ, **HOST_ENVIRONMENT, "TMPDIR": str(directory)},
            )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            live.directories.discard(directory)
            raise
        finally:
            os.close(log)
        live.groups.add(process.pid)
        logger.debug("model host started: pid %d", process.pid)
        return cls(process, directory, live)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def exited(self) -> bool:
        return self._process.returncode is not None

    async def send(self, message: messages.Message) -> None:
        assert self._process.stdin is not None
        try:
            await self._process.stdin.send(messages.encode(message))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise await self.ended() from exc

    async def receive(self) -> messages.Event:
        """The next event; HostGone when the host's output has ended."""
        try:
            line = await self._replies.receive_until(b"\n", messages.MAX_LINE_BYTES)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError) as exc:
            raise await self.ended() from exc
        try:
            return messages.decode_event(line)
        except ValueError as exc:
            raise HostGone(f"it wrote a line that is not a message ({exc})") from exc

    async def ended(self) -> HostGone:
        """How the host ended, with the tail of its log: for the error the job gets."""
        with anyio.move_on_after(2):
            await self._process.wait()
        code = self._process.returncode
        name = signal_name(-code) if code is not None and code < 0 else None
        if code is None:
            how = "stopped answering"
        elif name is not None:
            how = f"died from {name}"
            if name == "SIGKILL":
                how += (
                    ", sent from outside the worker (most often because memory ran out: "
                    "lower count or the image size, or use a smaller dtype)"
                )
        else:
            how = f"exited with code {code}"
        exit_code = code if code is not None and code >= 0 else None
        return HostGone(how, exit_code, name, self.log_tail())

    def log_tail(self) -> str:
        try:
            data = (self._directory / "host.log").read_bytes()[-8 * LOG_TAIL_CHARS :]
        except OSError:
            return ""
        lines = data.decode("utf-8", "replace").strip().splitlines()
        return " | ".join(line.strip() for line in lines[-8:])[-LOG_TAIL_CHARS:]

    def trim_log(self) -> None:
        """Keep the log of a long-lived host to its recent tail (called between jobs)."""
        trim_file(self._directory / "host.log", LOG_KEEP_BYTES)

    async def close(self, grace_seconds: float) -> None:
        """End of input (the host exits between jobs), then SIGTERM, then SIGKILL."""
        with contextlib.suppress(Exception):
            assert self._process.stdin is not None
            await self._process.stdin.aclose()
        with anyio.move_on_after(grace_seconds):
            await self._process.wait()
        await self.kill()

    async def kill(self) -> None:
        signal_group(self._process.pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await self._process.wait()
            with contextlib.suppress(Exception):
                await self._process.aclose()
        self._live.groups.discard(self._process.pid)
        shutil.rmtree(self._directory, ignore_errors=True)
        self._live.directories.discard(self._directory)


def trim_file(path: Path, limit: int) -> None:
    """Cut a file that grew past `limit` bytes to its last `limit // 2`."""
    try:
        if path.stat().st_size <= limit:
            return
        with open(path, "r+b") as log:
            log.seek(-(limit // 2), os.SEEK_END)
            tail = log.read()
            log.seek(0)
            log.truncate()
            log.write(tail)
    except OSError as exc:
        logger.debug("%s was not trimmed: %s", path, exc)
