"""Two ways to talk to the worker in tests: in-process over memory streams, and as a real
subprocess over its stdio, the way Studio does."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal
from anyio.streams.memory import MemoryObjectSendStream

from client.process import WorkerProcess as AsyncWorkerProcess
from client.process import open_worker
from client.session import SessionClosed, WorkerSession
from worker.app import build_server
from worker.backends.registry import read_settings
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
    """The server's line sink, feeding the client session's byte source."""

    def __init__(self, send: MemoryObjectSendStream[bytes]) -> None:
        self._send = send

    async def write(self, data: bytes) -> None:
        await self._send.send(data)


class InProcessWorker:
    """The worker's server on memory streams inside the test's event loop, spoken to
    through the same client session as a real worker."""

    def __init__(
        self, server: Server, session: WorkerSession, close_input: Callable[[], None]
    ) -> None:
        self.server = server
        self.session = session
        self.close_input = close_input
        """End the server's input, as end of file on stdin does."""

    @property
    def raw_lines(self) -> list[str]:
        return self.session.raw_lines

    async def send_raw(self, data: bytes) -> None:
        await self.session.send_raw(data)

    async def send(self, message: Any) -> None:
        await self.session.send(message)

    async def receive(self, wait: float = WAIT_SECONDS) -> Any:
        with anyio.fail_after(wait):
            return await self.session.receive()

    async def call(self, method: str, params: Any = None, id_: Any = 1) -> Message:
        """Send a request and return its response (notifications before it are skipped)."""
        await self.send(request(method, params, id_))
        while True:
            message = await self.receive()
            if isinstance(message, dict) and "method" not in message:
                return message

    async def remaining(self) -> list[Any]:
        """Every message left after input was closed and the server finished."""
        messages = []
        with contextlib.suppress(SessionClosed):
            while True:
                messages.append(await self.receive())
        return messages


async def generate_with_previews(
    worker: InProcessWorker, params: Any, wait: float = WAIT_SECONDS
) -> tuple[Message, list[Message]]:
    """Send one generate; its response, and the params of the `preview` notifications
    that came before it."""
    await worker.send(request("generate", params, 1))
    previews = []
    while "method" in (message := await worker.receive(wait)):
        if message["method"] == "preview":
            previews.append(message["params"])
    return message, previews


@asynccontextmanager
async def in_process_worker(
    settings: Settings | None = None,
    host: HostPlatform = LINUX,
    server: Server | None = None,
) -> AsyncIterator[InProcessWorker]:
    settings = settings if settings is not None else read_settings({})
    methods = None
    if server is None:
        server, methods = build_server(settings, host)
    stdin_send, stdin_receive = anyio.create_memory_object_stream[bytes](64)
    stdout_send, stdout_receive = anyio.create_memory_object_stream[bytes](4096)
    session = WorkerSession(stdout_receive, stdin_send, keep_messages=True)
    worker = InProcessWorker(server, session, stdin_send.close)

    async def serve() -> None:
        async with stdout_send:
            await server.serve(stdin_receive, _MemorySink(stdout_send))
            if methods is not None:  # as the command line does: end the model host
                await methods.aclose()

    try:
        async with stdout_receive, anyio.create_task_group() as group:
            group.start_soon(serve)
            group.start_soon(session.run)
            try:
                yield worker
            finally:
                stdin_send.close()
    finally:
        session.release()


def worker_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without SYSTEMSCULPT_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMSCULPT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # torch (in the diffusers model host) runs one thread per core, whose OpenMP barriers
    # spin: beside other load on a 2-core machine a step then takes a hundred times as
    # long. One thread keeps the suite's pace independent of what else runs.
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


class WorkerProcess:
    """`python -m worker` as a child process over its real stdio, for synchronous tests:
    the client library's process and session, run in a thread of their own."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self._portal_context = start_blocking_portal()
        self._portal = self._portal_context.__enter__()
        self._worker_context = self._portal.wrap_async_context_manager(
            open_worker(args, env, keep_messages=True, capture_stderr=True, cwd=REPO_ROOT)
        )
        self.worker: AsyncWorkerProcess = self._worker_context.__enter__()
        self._closed = False

    @property
    def pid(self) -> int:
        return self.worker.pid

    @property
    def returncode(self) -> int | None:
        return self.worker.returncode

    @property
    def raw_lines(self) -> list[str]:
        return self.worker.session.raw_lines

    @property
    def stderr(self) -> str:
        return self.worker.stderr

    def send_raw(self, data: bytes) -> None:
        self._portal.call(self.worker.session.send_raw, data)

    def send(self, message: Any) -> None:
        self._portal.call(self.worker.session.send, message)

    def receive(self, timeout: float = WAIT_SECONDS) -> Any:
        async def next_message() -> Any:
            with anyio.fail_after(timeout):
                return await self.worker.session.receive()

        try:
            return self._portal.call(next_message)
        except TimeoutError:
            raise TimeoutError(
                f"no line from the worker in {timeout}s; stderr:\n{self.stderr}"
            ) from None
        except SessionClosed:
            raise EOFError(f"the worker closed stdout; stderr:\n{self.stderr}") from None

    def messages(self, timeout: float = WAIT_SECONDS) -> Iterator[Any]:
        """Every message until stdout closes."""
        while True:
            try:
                yield self.receive(timeout)
            except EOFError:
                return

    def call(self, method: str, params: Any = None, id_: Any = 1) -> Message:
        """Send a request and return its response (notifications before it are skipped)."""
        return self.exchange(method, params, id_, WAIT_SECONDS)[0]

    def exchange(
        self, method: str, params: Any, id_: Any = 1, timeout: float = 60
    ) -> tuple[Message, list[Message]]:
        """Send a request; its response, and every notification that came before it."""
        self.send(request(method, params, id_))
        notifications = []
        while "method" in (message := self.receive(timeout)):
            notifications.append(message)
        return message, notifications

    def close_input(self) -> None:
        self._portal.call(self.worker.session.close_input)

    def signal(self, signum: signal.Signals) -> None:
        self.worker.signal(signum)

    def wait(self, timeout: float = WAIT_SECONDS) -> int:
        async def exit_code() -> int:
            with anyio.fail_after(timeout):
                return await self.worker.wait()

        async def output_ended() -> None:
            with anyio.move_on_after(timeout):
                await self.worker.session.wait_closed()

        code = self._portal.call(exit_code)
        self._portal.call(output_ended)
        return code

    def close(self) -> None:
        """Close the worker the library's way (nothing orphaned), and the portal."""
        if self._closed:
            return
        self._closed = True
        try:
            self._worker_context.__exit__(None, None, None)
        finally:
            self._portal_context.__exit__(None, None, None)


def start_worker_process(
    env: Mapping[str, str] | None = None, args: list[str] | None = None
) -> WorkerProcess:
    return WorkerProcess(args or [sys.executable, "-m", "worker"], worker_environment(env))
