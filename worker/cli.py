"""`studio-imagegen-worker`: serve JSON-RPC on stdio until end of input or a signal."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import anyio

from worker import __version__
from worker.app import build_server
from worker.backends.registry import read_settings
from worker.host import HostPlatform
from worker.live import LiveSamplers
from worker.methods import WorkerMethods
from worker.provision.commands import add_commands, run_doctor, run_install
from worker.scratch import sweep_stale
from worker.server import Server
from worker.settings import Settings
from worker.stdio import FdLineWriter, claim_stdin, claim_stdout, open_fd_reader

logger = logging.getLogger("worker")

EXIT_INTERRUPTED = 130


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s studio-imagegen-worker: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def report_settings(settings: Settings) -> None:
    for problem in settings.problems:
        logger.error("%s; generate answers -32007 until it is fixed", problem.describe())
    for adjustment in settings.adjustments:
        logger.warning("%s", adjustment)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="studio-imagegen-worker",
        description=(
            "Serve Studio's local image generation over JSON-RPC 2.0, one JSON value per line "
            "on stdin and stdout. Configured by SYSTEMSCULPT_LOCAL_* environment variables."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_serve_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="{serve,doctor,install}")
    _add_serve_options(
        commands.add_parser("serve", help="serve JSON-RPC on stdin/stdout (the default)")
    )
    add_commands(commands)
    return parser.parse_args(argv)


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--finish-on-eof",
        action="store_true",
        default=argparse.SUPPRESS,
        help="at end of input, let the jobs in flight and in the queue finish and be "
        "answered, then exit (for a file of requests piped in by hand); by default end of "
        "input means the host is gone, and running jobs are cancelled",
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.command == "doctor":
            return run_doctor(args)
        if args.command == "install":
            return run_install(args)
        return serve(finish_on_eof=getattr(args, "finish_on_eof", False))
    except KeyboardInterrupt:  # a Ctrl-C outside the serving loop's own handling
        return EXIT_INTERRUPTED


READY_BANNER = (
    "studio-imagegen-worker {version} is ready: type one JSON-RPC request per line, e.g.\n"
    '  {{"jsonrpc":"2.0","id":1,"method":"capabilities"}}\n'
    '  {{"jsonrpc":"2.0","id":2,"method":"generate","params":{{"prompt":"a red fox"}}}}\n'
    "Answers come on stdout. Ctrl-D ends the input ({eof}); Ctrl-C stops at once."
)


def serve(finish_on_eof: bool = False) -> int:
    settings = read_settings(os.environ)
    configure_logging(settings.log_level)
    report_settings(settings)
    sweep_stale()  # what a worker killed by SIGKILL could not remove
    interactive = os.isatty(0)
    protocol_out = claim_stdout()
    protocol_in = claim_stdin()
    if interactive:  # a person at a terminal, not a host: say how to use it, on stderr
        eof = "running jobs finish first" if finish_on_eof else "running jobs are cancelled"
        print(READY_BANNER.format(version=__version__, eof=eof), file=sys.stderr, flush=True)
    server, methods = build_server(settings, HostPlatform.current(), finish_on_eof)
    anyio.run(_serve, server, methods, protocol_in, protocol_out)
    # Shut down already: a Ctrl-C now (the second of a quick shutdown) leaves at once.
    signal.signal(signal.SIGINT, lambda signum, frame: _leave_now(methods.live))
    logger.debug("exiting")
    return 0


def _leave_now(live: LiveSamplers) -> None:
    live.abort_all()
    os._exit(EXIT_INTERRUPTED)


async def _serve(
    server: Server, methods: WorkerMethods, protocol_in: int, protocol_out: int
) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(_stop_on_signals, server, methods.live)
        await server.serve(open_fd_reader(protocol_in), FdLineWriter(protocol_out))
        await methods.aclose()
        group.cancel_scope.cancel()


async def _stop_on_signals(server: Server, live: LiveSamplers) -> None:
    """The first SIGTERM or SIGINT shuts down gracefully; a second SIGINT exits at once."""
    stopping = False
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stopping and signum == signal.SIGINT:
                logger.warning("second SIGINT: killing the samplers and exiting now")
                live.abort_all()
                os._exit(EXIT_INTERRUPTED)
            logger.info("%s received; cancelling jobs and shutting down", name)
            stopping = True
            server.stop()
