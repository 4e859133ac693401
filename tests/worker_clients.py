"""Two ways to talk to the worker in tests: in-process over memory streams, and as a real
subprocess over its stdio, the way Studio does."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from worker.app import build_server
from worker.host import HostPlatform
from worker.server import Server
from worker.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
LINUX = HostPlatform(system="Linux", os_version="6.1.0", machine="x86_64", python="3.11.7")
MACOS = HostPlatform(system="Darwin", os_version="14.5", machine="arm64", python="3.11.7")
WAIT_SECONDS = 10.0

Message = dict[str, Any]


def request(method: str, params: Any = None, id_: Any = 1) -> Message:
    message: Message = {"jsonrpc": "2.0", "method": method, "id": id_}
    if params is not None:
        message["params"] = params
    return message


class _MemorySink:
    def __init__(self, send: MemoryObjectSendStream[bytes]) -> None:
        self._send = send
        self.writes = 0

    async def write(self, data: bytes) -> None:
        self.writes += 1
        for line in data.splitlines():
            await self._send.send(line)


class InProcessWorker:
    """The worker's server on memory streams, inside the test's event loop."""

    def __init__(
        self,
        server: Server,
        stdin: MemoryObjectSendStream[bytes],
        stdout: MemoryObjectReceiveStream[bytes],
    ) -> None:
        self.server = server
        self._stdin = stdin
        self._stdout = stdout
        self.raw_lines: list[bytes] = []

    async def send_raw(self, data: bytes) -> None:
        await self._stdin.send(data)

    async def send(self, message: Any) -> None:
        await self.send_raw(json.dumps(message).encode() + b"\n")

    async def receive(self, wait: float = WAIT_SECONDS) -> Any:
        with anyio.fail_after(wait):
            line = await self._stdout.receive()
        self.raw_lines.append(line)
        return json.loads(line)

    async def call(self, method: str, params: Any = None, id_: Any = 1) -> Message:
        """Send a request and return its response (notifications before it are skipped)."""
        await self.send(request(method, params, id_))
        while True:
            message = await self.receive()
            if isinstance(message, dict) and "method" not in message:
                return message

    def close_input(self) -> None:
        self._stdin.close()

    async def remaining(self) -> list[Any]:
        """Every message left after input was closed and the server finished."""
        messages = []
        async for line in self._stdout:
            self.raw_lines.append(line)
            messages.append(json.loads(line))
        return messages


@asynccontextmanager
async def in_process_worker(
    settings: Settings | None = None,
    host: HostPlatform = LINUX,
    server: Server | None = None,
) -> AsyncIterator[InProcessWorker]:
    settings = settings if settings is not None else Settings.from_environ({})
    server = server if server is not None else build_server(settings, host)[0]
    stdin_send, stdin_receive = anyio.create_memory_object_stream[bytes](64)
    stdout_send, stdout_receive = anyio.create_memory_object_stream[bytes](4096)
    worker = InProcessWorker(server, stdin_send, stdout_receive)

    async def serve() -> None:
        async with stdout_send:
            await server.serve(stdin_receive, _MemorySink(stdout_send))

    async with stdout_receive, anyio.create_task_group() as group:
        group.start_soon(serve)
        try:
            yield worker
        finally:
            worker.close_input()


def worker_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without SYSTEMSCULPT_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMSCULPT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class WorkerProcess:
    """`python -m worker` as a child process, spoken to over its real stdin and stdout."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=REPO_ROOT,
        )
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.stdin = self.process.stdin
        self.raw_lines: list[bytes] = []
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr = bytearray()
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _pump_stdout(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.process.stderr
        stderr = self.process.stderr
        for chunk in iter(lambda: os.read(stderr.fileno(), 65536), b""):
            self._stderr += chunk

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def send_raw(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def send(self, message: Any) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float = WAIT_SECONDS) -> Any:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no line from the worker in {timeout}s; stderr:\n{self.stderr}"
            ) from None
        if line is None:
            raise EOFError(f"the worker closed stdout; stderr:\n{self.stderr}")
        self.raw_lines.append(line)
        return json.loads(line)

    def messages(self, timeout: float = WAIT_SECONDS) -> Iterator[Any]:
        """Every message until stdout closes."""
        while True:
            try:
                yield self.receive(timeout)
            except EOFError:
                return

    def call(self, method: str, params: Any = None, id_: Any = 1) -> Message:
        self.send(request(method, params, id_))
        while True:
            message = self.receive()
            if isinstance(message, dict) and "method" not in message:
                return message

    def close_input(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT_SECONDS) -> int:
        code = self.process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return code

    def close(self) -> None:
        """Kill the worker if it still runs, and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for thread in self._threads:
            thread.join(WAIT_SECONDS)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()


def start_worker_process(
    env: Mapping[str, str] | None = None, args: list[str] | None = None
) -> WorkerProcess:
    return WorkerProcess(args or [sys.executable, "-m", "worker"], worker_environment(env))
