"""A JSON-RPC connection to a worker process over its stdio, as Studio makes one."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

Message = dict[str, Any]
RawLog = Callable[[str, str], None]
"""Called with ("->" or "<-", line) for every line exchanged."""


class WorkerExited(Exception):
    """The worker closed its stdout before answering."""


class WorkerConnection:
    def __init__(self, process: Process, raw_log: RawLog | None = None) -> None:
        self._process = process
        self._raw_log = raw_log
        self._next_id = 1
        self._waiters: dict[int, anyio.Event] = {}
        self._responses: dict[int, Message] = {}
        self._notification_handlers: list[Callable[[Message], None]] = []
        self._closed = anyio.Event()

    @classmethod
    async def start(
        cls,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        raw_log: RawLog | None = None,
    ) -> WorkerConnection:
        process = await anyio.open_process(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the worker's logs go to the terminal's stderr
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the client only; it sends `cancel`
        )
        return cls(process, raw_log)

    @property
    def pid(self) -> int:
        return self._process.pid

    def on_notification(self, handler: Callable[[Message], None]) -> None:
        self._notification_handlers.append(handler)

    async def read_forever(self) -> None:
        assert self._process.stdout is not None
        buffer = ""
        async for text in TextReceiveStream(self._process.stdout):
            buffer += text
            *lines, buffer = buffer.split("\n")
            for line in lines:
                if line.strip():
                    self._dispatch(line)
        self._closed.set()
        for waiter in self._waiters.values():
            waiter.set()

    def _dispatch(self, line: str) -> None:
        if self._raw_log:
            self._raw_log("<-", line)
        message = json.loads(line)
        if "method" in message:
            for handler in self._notification_handlers:
                handler(message)
            return
        id_ = message.get("id")
        if isinstance(id_, int) and id_ in self._waiters:
            self._responses[id_] = message
            self._waiters.pop(id_).set()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        id_ = self._next_id
        self._next_id += 1
        self._waiters[id_] = anyio.Event()
        message: Message = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            message["params"] = params
        line = json.dumps(message)
        if self._raw_log:
            self._raw_log("->", line)
        assert self._process.stdin is not None
        await self._process.stdin.send(line.encode() + b"\n")
        return id_

    async def response(self, id_: int) -> Message:
        waiter = self._waiters.get(id_)
        if waiter is not None:
            await waiter.wait()
        if id_ not in self._responses:
            raise WorkerExited("the worker exited before answering; see its messages above")
        return self._responses.pop(id_)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Message:
        return await self.response(await self.send(method, params))

    async def close(self) -> int:
        """End the worker's input and wait for it to exit."""
        if self._process.stdin is not None:
            await self._process.stdin.aclose()
        with anyio.move_on_after(10):
            return await self._process.wait()
        self._process.kill()
        return await self._process.wait()
