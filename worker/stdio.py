"""The process's real stdin and stdout, as the transport's byte source and line sink."""

from __future__ import annotations

import errno
import os
import sys
import threading

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

READ_CHUNK_BYTES = 256 * 1024


def claim_stdout() -> int:
    """Keep the real stdout for the protocol alone; point fd 1 at stderr for everyone else.

    Returns a private, non-inheritable duplicate of the original stdout. After this, a
    stray `print`, a C extension writing to fd 1, or a child inheriting fd 1 all land on
    stderr, and only the protocol writer can reach the host's stdout pipe.
    """
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.set_inheritable(protocol_fd, False)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol_fd


def claim_stdin() -> int:
    """Keep stdin for the protocol alone; children get /dev/null on fd 0."""
    protocol_fd = os.dup(0)
    os.set_inheritable(protocol_fd, False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return protocol_fd


def open_fd_reader(fd: int) -> ObjectReceiveStream[bytes]:
    """Chunks read from `fd` by a daemon thread; the stream ends at end of file.

    A daemon thread rather than the event loop's selector: stdin may be a regular file or
    /dev/null (which epoll refuses), and a thread blocked in read() must not keep the
    process alive at shutdown.
    """
    send, receive = anyio.create_memory_object_stream[bytes](4)
    token = anyio.lowlevel.current_token()
    thread = threading.Thread(
        target=_read_until_eof, args=(fd, send, token), name="stdin-reader", daemon=True
    )
    thread.start()
    return receive


def _read_until_eof(
    fd: int, send: MemoryObjectSendStream[bytes], token: anyio.lowlevel.EventLoopToken
) -> None:
    try:
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK_BYTES)
            except OSError:
                chunk = b""
            if not chunk:
                break
            anyio.from_thread.run(send.send, chunk, token=token)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.RunFinishedError):
        return
    try:
        anyio.from_thread.run(send.aclose, token=token)
    except anyio.RunFinishedError:
        return


class FdLineWriter:
    """Writes whole buffers to a file descriptor from a worker thread.

    Blocking writes run off the event loop so a host that reads slowly stalls only the
    writer task, never request handling.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def write(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(_write_all, self._fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[written:]


def is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (
        isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.EBADF)
    )
