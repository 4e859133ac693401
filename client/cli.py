"""`studio-imagegen`: spawn the worker (or attach to a command), send one request, show it.

    studio-imagegen capabilities [--json]
    studio-imagegen generate "a red fox in snow" --count 2 --steps 20 --seed 7 --out DIR

Ctrl-C during `generate` sends `cancel` and waits for the worker's -32800; a second
Ctrl-C leaves at once. `--raw` shows every JSON line exchanged, on stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from client.connection import Message, WorkerConnection, WorkerExited
from client.display import ProgressDisplay, capabilities_summary, error_report
from protocol.errors import ErrorCode
from protocol.models import COMPUTE_UNITS, SCHEDULERS, CapabilitiesResult, ProgressParams

EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_PARAMS: 2,
    ErrorCode.UNSUPPORTED_FEATURE: 3,
    ErrorCode.BACKEND_UNAVAILABLE: 4,
    ErrorCode.SAMPLER_FAILED: 5,
    ErrorCode.TIMED_OUT: 6,
    ErrorCode.OUTPUT_INVALID: 7,
    ErrorCode.QUEUE_FULL: 8,
    ErrorCode.CONFIG_INVALID: 9,
    ErrorCode.CANCELLED: 130,
}
"""The exit code for each kind of error; any other error exits 1."""
EXIT_WORKER_GONE = 70


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="studio-imagegen",
        description="Try studio-imagegen-worker by hand: one request, shown as a person wants it.",
        epilog="Exit codes: 0 ok, "
        + ", ".join(f"{code} {error.name}" for error, code in EXIT_CODES.items())
        + f", {EXIT_WORKER_GONE} worker exited, 1 other errors.",
    )
    parser.add_argument(
        "--worker",
        default=f"{shlex.quote(sys.executable)} -m worker",
        help="the command that starts the worker (default: this Python's `-m worker`)",
    )
    parser.add_argument("--raw", action="store_true", help="print every JSON line exchanged")
    commands = parser.add_subparsers(dest="command", required=True)

    caps = commands.add_parser("capabilities", help="what the worker can do here, and why not")
    caps.add_argument("--json", action="store_true", help="print the raw result")

    gen = commands.add_parser("generate", help="generate images with live progress")
    gen.add_argument("prompt")
    gen.add_argument("--count", type=int, default=1)
    gen.add_argument("--steps", type=int, dest="step_count")
    gen.add_argument("--guidance", type=float, dest="guidance_scale")
    gen.add_argument("--scheduler", choices=SCHEDULERS)
    gen.add_argument("--compute-units", choices=COMPUTE_UNITS)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--negative", dest="negative_prompt", default="")
    gen.add_argument("--run-id", default="")
    gen.add_argument("--timeout-ms", type=int)
    gen.add_argument("--out", type=Path, default=Path("."), help="directory for the images")
    gen.add_argument("--json", action="store_true", help="print the raw result")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return anyio.run(_run, args)
    except WorkerExited as exc:
        print(f"studio-imagegen: {exc}", file=sys.stderr)
        return EXIT_WORKER_GONE
    except OSError as exc:
        print(f"studio-imagegen: cannot start the worker ({args.worker}): {exc}", file=sys.stderr)
        return EXIT_WORKER_GONE


def _raw_log(direction: str, line: str) -> None:
    print(f"{direction} {line}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> int:
    connection = await WorkerConnection.start(
        shlex.split(args.worker), raw_log=_raw_log if args.raw else None
    )
    async with anyio.create_task_group() as group:
        group.start_soon(connection.read_forever)
        try:
            if args.command == "capabilities":
                code = await _capabilities(connection, args)
            else:
                code = await _generate(connection, args)
        finally:
            with anyio.CancelScope(shield=True):
                await connection.close()
        group.cancel_scope.cancel()
    return code


async def _capabilities(connection: WorkerConnection, args: argparse.Namespace) -> int:
    response = await connection.call("capabilities")
    if "error" in response:
        return _report_error(response)
    if args.json:
        print(json.dumps(response["result"], indent=2))
    else:
        caps = CapabilitiesResult.model_validate(response["result"], by_alias=True, by_name=False)
        print(capabilities_summary(caps))
    return 0


async def _generate(connection: WorkerConnection, args: argparse.Namespace) -> int:
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {
        "prompt": args.prompt,
        "count": args.count,
        "runId": args.run_id,
        "negativePrompt": args.negative_prompt,
        "output": "path",
        "outputDir": str(out),
    }
    for name, key in [
        ("step_count", "stepCount"),
        ("guidance_scale", "guidanceScale"),
        ("scheduler", "scheduler"),
        ("compute_units", "computeUnits"),
        ("seed", "seed"),
        ("timeout_ms", "timeoutMs"),
    ]:
        if getattr(args, name) is not None:
            params[key] = getattr(args, name)

    display = ProgressDisplay(sys.stderr)

    def on_notification(message: Message) -> None:
        if message.get("method") == "progress" and not args.raw:
            display.update(
                ProgressParams.model_validate(message["params"], by_alias=True, by_name=False)
            )

    connection.on_notification(on_notification)
    request_id = await connection.send("generate", params)
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_on_interrupt, connection, request_id, display)
        response = await connection.response(request_id)
        group.cancel_scope.cancel()
    display.finish()
    if "error" in response:
        return _report_error(response)
    result = response["result"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    metadata = result["metadata"]
    print(
        f"{len(result['images'])} image(s) in {metadata['totalMs'] / 1000:.1f}s · "
        f"{result['modelId']} · seed {metadata['seed']} · {metadata['stepCount']} steps",
        file=sys.stderr,
    )
    for image in result["images"]:
        print(image["path"])
    return 0


async def _cancel_on_interrupt(
    connection: WorkerConnection, request_id: int, display: ProgressDisplay
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        interrupted = False
        async for _ in signals:
            display.finish()
            if interrupted:
                print("studio-imagegen: leaving without waiting", file=sys.stderr)
                raise SystemExit(EXIT_CODES[ErrorCode.CANCELLED])
            interrupted = True
            print("cancelling... (Ctrl-C again to leave at once)", file=sys.stderr, flush=True)
            await connection.send("cancel", {"requestId": request_id})


def _report_error(response: Message) -> int:
    error = response["error"]
    print(error_report(error), file=sys.stderr)
    known = ErrorCode.from_code(error.get("code"))
    return EXIT_CODES.get(known, 1) if known else 1


if __name__ == "__main__":
    raise SystemExit(main())
