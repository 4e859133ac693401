"""The model host process: `python -m worker.backends.diffusers.host --model PATH ...`.

Started and supervised by the worker's diffusers backend, never by hand. It loads the
model, then renders the jobs that come on stdin one at a time and reports on the
descriptor that was its stdout. It exits at the end of its input (the worker closed it
or died), after `--idle-ms` without a job, or when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import BinaryIO, NoReturn

from worker.backends.diffusers.host import messages
from worker.backends.diffusers.host.families import FAMILIES

logger = logging.getLogger("worker.backends.diffusers.host")

EXIT_LOAD_FAILED = 3
_PR_SET_PDEATHSIG = 1


class Channel:
    """The host's side of the pipe to the worker: whole lines, from any thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: messages.Message) -> None:
        with self._lock:
            self._stream.write(messages.encode(message))
            self._stream.flush()


def claim_reply_stream() -> BinaryIO:
    """The real stdout for the replies; fd 1 then points at stderr, so whatever a library
    prints ends in the log, never in the middle of a reply."""
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    return replies


def die_with_parent() -> None:
    """On Linux, the kernel kills the host when the worker dies, even by SIGKILL (end of
    input would tell it too, but only at the next step boundary)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def read_requests(inbox: queue.Queue[messages.HostJob | None], stop: threading.Event) -> None:
    """Jobs into the inbox, cancels straight to the stop flag; None at end of input."""
    for line in sys.stdin.buffer:
        try:
            message = messages.decode_request(line)
        except ValueError as exc:
            logger.error("ignored a line from the worker: %s", exc)
            continue
        if isinstance(message, messages.Cancel):
            stop.set()
        else:
            stop.clear()  # a cancel is for the job it follows, never the next one
            inbox.put(message.job)
    stop.set()
    inbox.put(None)


def serve(arguments: argparse.Namespace, channel: Channel) -> int:
    from worker.backends.diffusers.host import pipeline

    inbox: queue.Queue[messages.HostJob | None] = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=read_requests, args=(inbox, stop), daemon=True).start()

    def say(message: str) -> None:
        channel.send(messages.Loading(message=message))

    try:
        model = pipeline.load(
            arguments.model,
            arguments.device,
            arguments.dtype,
            arguments.safety,
            say,
            arguments.label,
            arguments.family,
            arguments.refiner,
        )
    except pipeline.LoadError as exc:
        channel.send(messages.LoadFailed(reason=exc.reason, fix=exc.fix))
        return EXIT_LOAD_FAILED
    channel.send(
        messages.Loaded(
            device=model.device,
            dtype=model.dtype,
            dtype_reason=model.dtype_reason,
            load_ms=model.load_ms,
            safety_checker=model.safety_checker,
        )
    )
    idle_seconds = arguments.idle_ms / 1000 if arguments.idle_ms else None
    while True:
        try:
            job = inbox.get(timeout=idle_seconds)
        except queue.Empty:
            channel.send(messages.Unloaded(idle_ms=arguments.idle_ms))
            return 0
        if job is None:
            return 0
        try:
            pipeline.render(model, job, stop, channel.send)
        except pipeline.Stopped:
            channel.send(messages.Cancelled())
            continue
        except Exception as exc:  # the job failed; the host and its model are still fine
            logger.exception("job failed")
            channel.send(messages.Failed(reason=f"{type(exc).__name__}: {exc}"))
            continue
        channel.send(messages.Done())


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(
        prog="python -m worker.backends.diffusers.host", description=__doc__
    )
    parser.add_argument("--model", type=Path, required=True, help="Directory or checkpoint")
    parser.add_argument("--label", default="the model", help="How messages name the model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--idle-ms", type=int, default=0, help="Exit after this long idle")
    parser.add_argument("--safety", action="store_true", help="Run the safety checker")
    parser.add_argument(
        "--family", choices=sorted(FAMILIES), help="sd1, sd2, sdxl, sd3 (default: read it)"
    )
    parser.add_argument("--refiner", action="store_true", help="An SDXL refiner")
    arguments = parser.parse_args(argv)
    channel = Channel(claim_reply_stream())
    die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="model host: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when a job stops
    try:
        code = serve(arguments, channel)
    except BaseException:
        logger.exception("the model host failed")
        code = 1
    # Straight out: the reader thread may be blocked in a read of stdin, which the
    # interpreter's own shutdown would wait on (and abort).
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
