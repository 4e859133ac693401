"""One JSON-RPC 2.0 peer over line-delimited byte streams: the client of the worker.

It correlates responses with the requests it sent by id, hands notifications to
handlers that can be removed again, can keep every message in arrival order (for tests
and captures), and reports every line exchanged if asked. The terminal client, the
tests' drivers (in-process and over a real process), the exchange capture and the
benchmarks all talk to the worker through it. The worker never imports it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

Message = Any
"""A decoded JSON value from the worker: an object, or an array for a batch."""
RawLog = Callable[[str, str], None]
"""Called with ("->" or "<-", line) for every line exchanged."""
NotificationHandler = Callable[[dict[str, Any]], None]


class SessionClosed(Exception):
    """The worker closed its output before the awaited answer or message came."""


class ByteSource(Protocol):
    async def receive(self) -> bytes: ...


class ByteSink(Protocol):
    async def send(self, item: bytes) -> None: ...

    async def aclose(self) -> None: ...


def id_key(id_: Any) -> str:
    """Ids compare as JSON values: 2 and 2.0 alike, "2" apart."""
    if isinstance(id_, float) and id_.is_integer():
        id_ = int(id_)
    return json.dumps(id_)


class WorkerSession:
    """The client side of one connection. Run `run()` in a task while using it."""

    def __init__(
        self,
        source: ByteSource,
        sink: ByteSink,
        *,
        raw_log: RawLog | None = None,
        keep_messages: bool = False,
    ) -> None:
        self._source = source
        self._sink = sink
        self._raw_log = raw_log
        self._ids = itertools.count(1)
        self._waiters: dict[str, anyio.Event] = {}
        self._responses: dict[str, dict[str, Any]] = {}
        self._handlers: list[NotificationHandler] = []
        self._finished = anyio.Event()
        self.answering = anyio.Event()
        """Set at the first line that is the worker's protocol (a response or a
        notification): it answers at all."""
        self.echoed = 0
        """Lines that were requests, as this session sends them: an echo, not a worker."""
        self.raw_lines: list[str] = []
        """Every line received, when `keep_messages` is on."""
        self._inbox: tuple[MemoryObjectSendStream[Message], MemoryObjectReceiveStream[Message]]
        self._keep = keep_messages
        self._inbox = anyio.create_memory_object_stream[Message](math.inf if keep_messages else 0)

    # --- reading ------------------------------------------------------------------------

    async def run(self) -> None:
        """Read until the worker closes its output; every waiter is woken then."""
        buffer = b""
        try:
            while True:
                try:
                    chunk = await self._source.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._dispatch(line)
            if buffer.strip():
                self._dispatch(buffer)
        finally:
            self._finished.set()
            for waiter in self._waiters.values():
                waiter.set()
            self._inbox[0].close()

    def _dispatch(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self._raw_log:
            self._raw_log("<-", text)
        if self._keep:
            self.raw_lines.append(text)
        try:
            message = json.loads(text)
        except ValueError:
            return  # not the protocol: kept in raw_lines, where tests look for it
        if self._keep:
            self._inbox[0].send_nowait(message)
        for item in message if isinstance(message, list) else [message]:
            if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
                continue
            if "method" in item and "id" in item:
                self.echoed += 1  # a worker sends no requests
                continue
            self.answering.set()
            if "method" in item:
                for handler in list(self._handlers):
                    handler(item)
                continue
            key = id_key(item.get("id"))
            waiter = self._waiters.pop(key, None)
            if waiter is not None:
                self._responses[key] = item
                waiter.set()

    # --- notifications --------------------------------------------------------------------

    def subscribe(self, handler: NotificationHandler) -> Callable[[], None]:
        """Call `handler` with every notification until the returned function is called."""
        self._handlers.append(handler)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.remove(handler)

        return unsubscribe

    @contextlib.contextmanager
    def notifications(self, handler: NotificationHandler) -> Iterator[None]:
        """`handler` gets the notifications that arrive inside the block, and no others."""
        unsubscribe = self.subscribe(handler)
        try:
            yield
        finally:
            unsubscribe()

    # --- writing --------------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are, for malformed input in tests."""
        await self._sink.send(data)

    async def send(self, message: Any) -> None:
        """One JSON value on one line."""
        line = json.dumps(message)
        if self._raw_log:
            self._raw_log("->", line)
        await self.send_raw(line.encode() + b"\n")

    async def request(self, method: str, params: Any = None, id_: Any = None) -> Any:
        """Send a request (with the next number as id unless given); returns the id."""
        if id_ is None:
            id_ = next(self._ids)
        self._waiters[id_key(id_)] = anyio.Event()
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return id_

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)

    async def response(self, id_: Any) -> dict[str, Any]:
        """The response to a request this session sent."""
        key = id_key(id_)
        waiter = self._waiters.get(key)
        if waiter is not None:
            await waiter.wait()
        if key not in self._responses:
            raise SessionClosed("the worker closed its output before answering")
        return self._responses.pop(key)

    async def call(self, method: str, params: Any = None, id_: Any = None) -> dict[str, Any]:
        return await self.response(await self.request(method, params, id_))

    async def receive(self) -> Message:
        """The next message in arrival order (with `keep_messages`); SessionClosed at the end."""
        if not self._keep:
            raise RuntimeError("receive() needs a session made with keep_messages=True")
        try:
            return await self._inbox[1].receive()
        except anyio.EndOfStream:
            raise SessionClosed("the worker closed its output") from None

    async def close_input(self) -> None:
        """End the worker's input (end of file on its stdin)."""
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._sink.aclose()

    @property
    def closed(self) -> bool:
        """True once the worker's output has ended."""
        return self._finished.is_set()

    async def wait_closed(self) -> None:
        await self._finished.wait()

    def release(self) -> None:
        """Drop the messages not yet received; the owner calls this when done with it."""
        for stream in self._inbox:
            stream.close()
