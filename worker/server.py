"""The serving loop: lines in, one task per line, whole lines out through one writer."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import anyio
from anyio.abc import ObjectReceiveStream

from protocol.errors import ErrorCode, ErrorDetailData
from worker.context import JsonId, RequestContext
from worker.dispatch import Dispatcher, error_response, invalid_request
from worker.framing import OversizedLine, read_lines
from worker.settings import ENV_MAX_REQUEST_BYTES
from worker.stdio import is_broken_pipe

logger = logging.getLogger(__name__)

OUTBOX_CAPACITY = 1024


class LineSink(Protocol):
    """Where the protocol's bytes go: the real stdout, or a test's buffer."""

    async def write(self, data: bytes) -> None: ...


def encode_line(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


class Outbox:
    """The only writer of protocol output: whole lines, in the order they were queued.

    Responses wait for room; progress notifications are dropped when the host reads so
    slowly that the queue is full (the next one carries newer numbers anyway).
    """

    def __init__(self, sink: LineSink, capacity: int = OUTBOX_CAPACITY) -> None:
        self._sink = sink
        self._send, self._receive = anyio.create_memory_object_stream[bytes](capacity)
        self.broken = False

    def notify(self, method: str, params: dict[str, Any]) -> None:
        if self.broken:
            return
        line = encode_line({"jsonrpc": "2.0", "method": method, "params": params})
        try:
            self._send.send_nowait(line)
        except anyio.WouldBlock:
            logger.debug("output queue full; dropped a %s notification", method)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def send(self, message: Any) -> None:
        if self.broken:
            return
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._send.send(encode_line(message))

    def close(self) -> None:
        self._send.close()

    async def run(self, on_broken: Callable[[], None]) -> None:
        """Write queued lines until closed; batches what is ready into one write."""
        async with self._receive:
            async for line in self._receive:
                lines = [line]
                while True:
                    try:
                        lines.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if self.broken:
                    continue
                try:
                    await self._sink.write(b"".join(lines))
                except OSError as exc:
                    if not is_broken_pipe(exc):
                        raise
                    logger.info("the host closed stdout; shutting down")
                    self.broken = True
                    on_broken()


class Server:
    """Owns the serving loop: reads requests until end of input or `stop()`, answers each
    in a task of its own through the one `Outbox`, and at the end cancels what is still
    running (`on_stop`), answers what it can within the deadline, and returns.

    With `finish_on_eof`, end of input lets the requests in flight finish and be answered
    first (a file of requests piped in by hand); `stop()` still cancels them.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        max_request_bytes: int,
        on_stop: Callable[[], None] = lambda: None,
        stop_deadline_seconds: float = 5.0,
        finish_on_eof: bool = False,
    ) -> None:
        self._dispatcher = dispatcher
        self._max_request_bytes = max_request_bytes
        self._on_stop = on_stop
        self._stop_deadline_seconds = stop_deadline_seconds
        self._finish_on_eof = finish_on_eof
        self._reading: anyio.CancelScope | None = None
        self._finishing: anyio.CancelScope | None = None
        self._stop_requested = False
        self._in_flight = 0
        self._idle: anyio.Event | None = None
        """Set when the last request in flight is answered (made inside the event loop)."""

    def stop(self) -> None:
        """Stop reading input; requests in flight are still answered (-32800 for jobs)."""
        self._stop_requested = True
        for scope in (self._reading, self._finishing):
            if scope is not None:
                scope.cancel()

    async def serve(self, chunks: ObjectReceiveStream[bytes], sink: LineSink) -> None:
        """Serve until the input ends or `stop()`; returns once every answer is written."""
        outbox = Outbox(sink)
        async with anyio.create_task_group() as writer:
            writer.start_soon(outbox.run, self.stop)
            async with anyio.create_task_group() as handlers:
                self._reading = anyio.CancelScope()
                if self._stop_requested:
                    self._reading.cancel()
                with self._reading:
                    async with chunks:
                        async for item in read_lines(chunks, self._max_request_bytes):
                            handlers.start_soon(self._answer_counted, item, outbox)
                if self._finish_on_eof and not self._stop_requested and self._in_flight:
                    logger.info("end of input: finishing %d request(s) first", self._in_flight)
                    self._idle = anyio.Event()
                    with anyio.CancelScope() as self._finishing:
                        await self._idle.wait()
                logger.debug("stopped reading input; cancelling what is left")
                self._on_stop()
                # Requests still in flight get until the deadline to be answered.
                handlers.cancel_scope.deadline = anyio.current_time() + self._stop_deadline_seconds
            outbox.close()

    async def _answer_counted(self, item: bytes | OversizedLine, outbox: Outbox) -> None:
        self._in_flight += 1
        try:
            await self._answer(item, outbox)
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._idle is not None:
                self._idle.set()

    async def _answer(self, item: bytes | OversizedLine, outbox: Outbox) -> None:
        if isinstance(item, OversizedLine):
            await outbox.send(
                invalid_request(
                    f"the line is {item.size} bytes, over the limit of {item.limit} bytes "
                    f"(raise {ENV_MAX_REQUEST_BYTES}, or send files by path)"
                )
            )
            return

        def make_context(request_id: JsonId, is_notification: bool) -> RequestContext:
            return RequestContext(request_id, is_notification, outbox.notify)

        response: Any = None
        try:
            response = await self._dispatcher.handle_line(item, make_context)
            if response is not None:
                await outbox.send(response)
        except Exception:  # a fault of ours must not end the serving loop
            logger.exception("could not answer a line")
            answered_id = response.get("id") if isinstance(response, dict) else None
            await outbox.send(
                error_response(
                    ErrorCode.INTERNAL_ERROR,
                    "Internal error: the worker could not write its answer; its stderr has the "
                    "details.",
                    ErrorDetailData(reason="the worker could not write its answer"),
                    answered_id,
                )
            )
