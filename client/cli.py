"""`studio-imagegen`: spawn the worker (or any command), send one request, show it.

    studio-imagegen capabilities [--json]
    studio-imagegen generate "a red fox in snow" --count 2 --steps 20 --seed 7 --out DIR

Ctrl-C during `generate` sends `cancel` and waits for the worker's -32800; a second
Ctrl-C makes the worker exit at once (it kills its samplers and removes their files) and
leaves. `--raw` shows every JSON line exchanged, on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from client.display import ProgressDisplay, capabilities_summary, error_report, models_table
from client.process import WorkerProcess, open_worker
from client.session import Message, SessionClosed
from protocol.errors import ErrorCode
from protocol.models import (
    COMPUTE_UNITS,
    QUALITY_PRESETS,
    REFERENCE_INFLUENCE_STRENGTHS,
    SCHEDULERS,
    CapabilitiesResult,
    ProgressParams,
)
from worker.text import terminal_safe

EXIT_USAGE = 2
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_PARAMS: 10,
    ErrorCode.UNSUPPORTED_FEATURE: 11,
    ErrorCode.BACKEND_UNAVAILABLE: 12,
    ErrorCode.SAMPLER_FAILED: 13,
    ErrorCode.TIMED_OUT: 14,
    ErrorCode.OUTPUT_INVALID: 15,
    ErrorCode.QUEUE_FULL: 16,
    ErrorCode.CONFIG_INVALID: 17,
    ErrorCode.OUTPUT_NOT_WRITTEN: 18,
    ErrorCode.CANCELLED: 130,
}
"""The exit code for each kind of error answer; any other error answer exits 1."""
EXIT_WORKER_GONE = 70
EXIT_OUTPUT_CLOSED = 141
"""What a program killed by SIGPIPE exits with: the reader of stdout went away."""
LEAVE_SECONDS = 3.0
"""After a second Ctrl-C, how long the worker gets for its fast exit."""
ANSWER_SECONDS = 30.0
"""How long a worker may take to send its first protocol line (it answers in a second)."""


def default_output_dir() -> Path:
    """Where images go unless `--out` says: the pictures folder, never the current one."""
    pictures = os.environ.get("XDG_PICTURES_DIR")
    base = Path(pictures).expanduser() if pictures else Path.home() / "Pictures"
    return base / "studio-imagegen"


class HelpWithDefaults(argparse.HelpFormatter):
    """`(default: X)` after an option's help where it has a default of its own; none for
    an option the worker decides (its help says so) or a flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS or default == "":
            return text
        if "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="studio-imagegen",
        description="Try studio-imagegen-worker by hand: one request, shown as a person wants it.",
        epilog="Exit codes: 0 ok, 1 other error, "
        f"{EXIT_USAGE} usage error, "
        + ", ".join(f"{code} {error.name}" for error, code in EXIT_CODES.items())
        + f", {EXIT_WORKER_GONE} the worker exited or could not start, "
        f"{EXIT_OUTPUT_CLOSED} the reader of stdout went away.",
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument(
        "--worker",
        default=f"{shlex.quote(sys.executable)} -m worker",
        help="the command that starts the worker",
    )
    parser.add_argument(
        "--raw", action="store_true", help="print every JSON line exchanged, on stderr"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=ANSWER_SECONDS,
        metavar="SECONDS",
        help="how long the worker may take to answer at all (its first protocol line); "
        f"then the client gives up, exit {EXIT_WORKER_GONE}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    caps = commands.add_parser(
        "capabilities",
        help="what the worker can do here, and why not",
        formatter_class=HelpWithDefaults,
    )
    caps.add_argument("--json", action="store_true", help="print the raw result")

    menu = commands.add_parser(
        "models",
        help="the models the worker can run, and which is the default",
        formatter_class=HelpWithDefaults,
    )
    menu.add_argument("--json", action="store_true", help="print the models as JSON")

    gen = commands.add_parser(
        "generate",
        help="generate images with live progress",
        description="Generate images and write them to a folder; their paths go to stdout, "
        "progress and messages to stderr. Options left out take the worker's defaults "
        "(`studio-imagegen capabilities` shows them).",
        formatter_class=HelpWithDefaults,
    )
    gen.add_argument("prompt", help="what to draw")
    gen.add_argument(
        "--model", help="a model id from `studio-imagegen models` (default: the worker's)"
    )
    gen.add_argument("--count", type=int, default=1, help="how many images (1 to 8)")
    gen.add_argument(
        "--quality",
        choices=list(QUALITY_PRESETS),
        help="a preset of steps and guidance: "
        + ", ".join(
            f"{p.name} {p.step_count}/{p.guidance_scale:g}" for p in QUALITY_PRESETS.values()
        )
        + "; --steps and --guidance win over it",
    )
    gen.add_argument(
        "--steps", type=int, dest="step_count", help="denoising steps (worker's default)"
    )
    gen.add_argument(
        "--guidance", type=float, dest="guidance_scale", help="guidance scale, 0 to 30"
    )
    gen.add_argument("--scheduler", choices=SCHEDULERS, help="sampler scheduler")
    gen.add_argument("--compute-units", choices=COMPUTE_UNITS, help="Core ML compute units")
    gen.add_argument("--seed", type=int, help="0 to 4294967295; derived from prompt and run")
    gen.add_argument(
        "--negative", dest="negative_prompt", default="", help="what to steer away from"
    )
    gen.add_argument(
        "--image", type=Path, help="a reference image (PNG, JPEG or WebP): image-to-image"
    )
    gen.add_argument(
        "--strength",
        type=float,
        help="with --image: how far the result may move from it, 0 < s <= 1",
    )
    gen.add_argument(
        "--influence",
        dest="reference_influence",
        choices=list(REFERENCE_INFLUENCE_STRENGTHS),
        help="with --image: subtle 0.75, balanced 0.55, strong 0.35 (the worker's default: "
        "balanced); --strength wins",
    )
    gen.add_argument(
        "--mask",
        type=Path,
        help="with --image: inpaint where this image is white (black keeps it exactly)",
    )
    gen.add_argument(
        "--mask-blur", type=int, help="with --mask or --outpaint: feather the edge (pixels)"
    )
    gen.add_argument(
        "--outpaint",
        type=_outpaint,
        help="with --image: extend the canvas, as LEFT,RIGHT,TOP,BOTTOM pixels (e.g. "
        "0,256,0,0) or an aspect ratio (e.g. 16:9)",
    )
    gen.add_argument(
        "--control",
        dest="controls",
        action="append",
        type=_control,
        metavar="NAME=IMAGE[:WEIGHT]",
        help="steer the structure with a ControlNet the model lists (capabilities) and its "
        "image, at a weight (default 1); repeat for several",
    )
    gen.add_argument(
        "--lora",
        dest="loras",
        action="append",
        type=_lora,
        metavar="NAME[:WEIGHT]",
        help="apply a LoRA the model lists (capabilities), at a weight (default 1); repeat "
        "for several (diffusers)",
    )
    gen.add_argument(
        "--clip-skip",
        type=int,
        dest="clip_skip",
        help="read the text encoder's Nth layer from the end, 1 (the last) to 12, as "
        "AUTOMATIC1111 counts (SD 1.x/2.x on diffusers)",
    )
    gen.add_argument("--ratio", dest="aspect_ratio", help="aspect ratio, e.g. 16:9 (default 1:1)")
    gen.add_argument(
        "--size",
        type=_size,
        metavar="WxH",
        help="image size instead of --ratio, e.g. 768x512 (multiples of 8; any size with the "
        "diffusers backend, a bundle's size with Core ML)",
    )
    gen.add_argument(
        "--preview-every",
        type=int,
        dest="preview_every",
        help="write a preview every N steps into the output folder",
    )
    gen.add_argument("--run-id", default="", help="the Studio run this belongs to")
    gen.add_argument("--timeout-ms", type=int, help="stop the sampler after this long")
    gen.add_argument("--out", type=Path, default=default_output_dir(), help="folder for the images")
    gen.add_argument("--json", action="store_true", help="print the raw result")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "generate":
        problem = _unusable_output_dir(args.out)
        if problem:
            print(f"studio-imagegen: --out {args.out} {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return anyio.run(_run, args)
    except (SessionClosed, anyio.BrokenResourceError, anyio.ClosedResourceError):
        print("studio-imagegen: the worker exited; see its messages above", file=sys.stderr)
        return EXIT_WORKER_GONE
    except OSError as exc:
        if _is_broken_pipe(exc):
            _silence_stdout()
            return EXIT_OUTPUT_CLOSED
        print(f"studio-imagegen: cannot start the worker ({args.worker}): {exc}", file=sys.stderr)
        return EXIT_WORKER_GONE
    except KeyboardInterrupt:
        return EXIT_CODES[ErrorCode.CANCELLED]


def _unusable_output_dir(out: Path) -> str:
    """Why images cannot be written to `out` (checked before the worker starts); empty
    when they can. A folder that does not exist yet is made."""
    folder = out.expanduser()
    if folder.exists() and not folder.is_dir():
        return "is a file, not a folder; name a folder (one that does not exist is made)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".studio-imagegen-probe-"):
            pass
    except OSError as exc:
        return f"cannot take the images ({exc.strerror or exc}); choose a folder you can write to"
    return ""


def _is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError)


def _silence_stdout() -> None:
    """After the reader went away, Python's own flush at exit must not complain."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _raw_log(direction: str, line: str) -> None:
    print(f"{direction} {terminal_safe(line)}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> int:
    command = shlex.split(args.worker)
    raw_log = _raw_log if args.raw else None
    display = ProgressDisplay(sys.stderr)
    try:
        async with open_worker(command, raw_log=raw_log, on_stderr_line=display.log) as worker:
            if args.command in ("capabilities", "models"):
                return await _answered_within(args.wait, worker, _capabilities(worker, args))
            return await _answered_within(args.wait, worker, _generate(worker, args, display))
    except* (SessionClosed, anyio.BrokenResourceError, anyio.ClosedResourceError) as group:
        raise group.exceptions[0] from None
    except* BrokenPipeError as group:
        raise group.exceptions[0] from None


async def _answered_within(seconds: float, worker: WorkerProcess, work: Awaitable[int]) -> int:
    """`work`'s exit code, unless the worker sends no protocol line at all within
    `seconds` (a command that is no worker, one that hangs): then exit 70, saying so."""
    outcome: list[int | Exception] = []

    async def do_work(scope: anyio.CancelScope) -> None:
        try:
            outcome.append(await work)
        except Exception as exc:  # raised as it is below, not inside an exception group
            outcome.append(exc)
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(do_work, group.cancel_scope)
        with anyio.move_on_after(seconds):
            await worker.session.answering.wait()
        if not worker.session.answering.is_set():
            echoed = worker.session.echoed
            why = " (it sent our own request back: is --worker a worker?)" if echoed else ""
            print(
                f"studio-imagegen: the worker sent nothing of the protocol within "
                f"{seconds:g} s{why}",
                file=sys.stderr,
            )
            group.cancel_scope.cancel()
            return EXIT_WORKER_GONE
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


async def _capabilities(worker: WorkerProcess, args: argparse.Namespace) -> int:
    response = await worker.session.call("capabilities")
    if "error" in response:
        return _report_error(response)
    result = response["result"]
    if args.json:
        shown = result["models"] if args.command == "models" else result
        print(json.dumps(shown, indent=2), flush=True)
        return 0
    caps = CapabilitiesResult.model_validate(result, by_alias=True, by_name=False)
    summary = models_table if args.command == "models" else capabilities_summary
    print(terminal_safe(summary(caps)), flush=True)
    return 0


def _generate_params(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    params: dict[str, Any] = {
        "prompt": args.prompt,
        "count": args.count,
        "runId": args.run_id,
        "negativePrompt": args.negative_prompt,
        "output": "path",
        "outputDir": str(out),
    }
    for name, key in [
        ("quality", "quality"),
        ("strength", "strength"),
        ("reference_influence", "referenceInfluence"),
        ("aspect_ratio", "aspectRatio"),
        ("preview_every", "previewEvery"),
        ("step_count", "stepCount"),
        ("guidance_scale", "guidanceScale"),
        ("scheduler", "scheduler"),
        ("compute_units", "computeUnits"),
        ("seed", "seed"),
        ("timeout_ms", "timeoutMs"),
        ("model", "model"),
        ("mask_blur", "maskBlur"),
        ("outpaint", "outpaint"),
        ("clip_skip", "clipSkip"),
    ]:
        if getattr(args, name) is not None:
            params[key] = getattr(args, name)
    if args.size is not None:
        params["width"], params["height"] = args.size
    if args.image is not None:
        params["inputImages"] = [_image_item(args.image)]
    if args.mask is not None:
        params["mask"] = _image_item(args.mask)
    if args.controls:
        params["controls"] = [
            {
                "model": name,
                "image": _image_item(image),
                **({} if weight is None else {"weight": weight}),
            }
            for name, image, weight in args.controls
        ]
    if args.loras:
        params["loras"] = [
            {"name": name, **({} if weight is None else {"weight": weight})}
            for name, weight in args.loras
        ]
    return params


def _lora(text: str) -> tuple[str, float | None]:
    """`style` or `style:0.7`: the LoRA and its weight."""
    name, colon, weight = text.rpartition(":")
    if not colon:
        return text, None
    try:
        return name, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME[:WEIGHT]: {weight!r} is not a number (as style:0.7)"
        ) from None


def _control(text: str) -> tuple[str, Path, float | None]:
    """`depth=map.png` or `depth=map.png:0.6`: the ControlNet, its image, its weight."""
    name, separator, rest = text.partition("=")
    if not separator or not name or not rest:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=IMAGE[:WEIGHT] (as depth=map.png or depth=map.png:0.6)"
        )
    image, colon, weight = rest.rpartition(":")
    try:
        return (name, Path(image), float(weight)) if colon and image else (name, Path(rest), None)
    except ValueError:  # a colon of the path itself: no weight given
        return name, Path(rest), None


def _image_item(path: Path) -> dict[str, str]:
    image = path.expanduser().resolve()
    return {"mimeType": _image_type(image), "path": str(image)}


def _outpaint(text: str) -> dict[str, Any]:
    """`0,256,0,0` (left, right, top, bottom) or `16:9`; the worker checks the values."""
    if ":" in text:
        return {"aspectRatio": text}
    parts = text.split(",")
    if len(parts) != 4 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither LEFT,RIGHT,TOP,BOTTOM pixels (as 0,256,0,0) nor a ratio (16:9)"
        )
    return dict(zip(("left", "right", "top", "bottom"), map(int, parts), strict=True))


def _size(text: str) -> tuple[int, int]:
    """`768x512` as (768, 512); the worker checks the range."""
    width, separator, height = text.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 768x512")
    return int(width), int(height)


def _image_type(path: Path) -> str:
    """The type the file's first bytes say, for the worker to check against its content."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        return "image/png"  # the worker names the unreadable file
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


async def _generate(
    worker: WorkerProcess, args: argparse.Namespace, display: ProgressDisplay
) -> int:
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    previews: list[str] = []
    totals: list[int] = []

    def on_notification(message: Message) -> None:
        if message.get("method") == "preview":
            previews.append(message["params"].get("path", ""))
        if message.get("method") == "progress":
            progress = ProgressParams.model_validate(
                message["params"], by_alias=True, by_name=False
            )
            if progress.phase == "sampling":
                totals.append(progress.total_steps)
            if not args.raw:
                display.update(progress)

    session = worker.session
    interruption = Interruption()
    with session.notifications(on_notification):
        request_id = await session.request("generate", _generate_params(args, out))
        async with anyio.create_task_group() as group:
            group.start_soon(
                _cancel_on_interrupt, worker, request_id, display, interruption, group.cancel_scope
            )
            try:
                response = await session.response(request_id)
            except SessionClosed:
                if not interruption.leaving:
                    raise
                await interruption.left.wait()  # the watcher ends the group then
            group.cancel_scope.cancel()
    display.finish()
    if interruption.leaving:
        print("studio-imagegen: left without waiting; the worker stopped its job", file=sys.stderr)
        return EXIT_CODES[ErrorCode.CANCELLED]
    if "error" in response:
        return _report_error(response)
    result = response["result"]
    if args.json:
        print(json.dumps(result, indent=2), flush=True)
        return 0
    for warning in result["warnings"]:
        print(f"warning: {terminal_safe(warning)}", file=sys.stderr)
    if previews:
        print(f"{len(previews)} preview(s) written to {out} (*.preview.png)", file=sys.stderr)
    metadata = result["metadata"]
    print(
        terminal_safe(
            f"{len(result['images'])} image(s) in {metadata['totalMs'] / 1000:.1f}s · "
            f"{result['modelId']} · seed {metadata['seed']} · {metadata['stepCount']} steps · "
            f"written to {out}"
        ),
        file=sys.stderr,
    )
    counted = _steps_counted(metadata, len(result["images"]), totals[-1] if totals else 0)
    if counted:
        print(counted, file=sys.stderr)
    for image in result["images"]:
        print(terminal_safe(image["path"]), flush=True)
    return 0


def _steps_counted(metadata: dict[str, Any], images: int, total: int) -> str:
    """Why the bar counted other than the steps asked, once: from a reference, a share of
    them runs (its strength); the pndm scheduler runs one more, its warm-up."""
    asked = metadata["stepCount"]
    if total in (asked, asked * images, 0):
        return ""
    reasons = []
    strength = metadata.get("strength")
    if strength is not None and strength < 1:
        reasons.append(
            f"from a reference at strength {strength:g} the sampler runs that share of the "
            f"{asked} steps"
        )
    if metadata["scheduler"] == "pndm":
        than = "" if reasons else f" than the {asked} asked"
        reasons.append(
            f"the pndm scheduler runs one step more{than}, to start its multistep method"
        )
    return f"(the bar counted {total}: {'; '.join(reasons)})" if reasons else ""


@dataclass
class Interruption:
    """What the person asked for with Ctrl-C while the job ran."""

    cancelled: bool = False
    leaving: bool = False
    """A second Ctrl-C came: the answer is no longer awaited."""
    left: anyio.Event = field(default_factory=anyio.Event)
    """The worker has exited (or had its chance to)."""


async def _cancel_on_interrupt(
    worker: WorkerProcess,
    request_id: Any,
    display: ProgressDisplay,
    interruption: Interruption,
    waiting: anyio.CancelScope,
) -> None:
    """First Ctrl-C: cancel and wait for the answer. Second: the worker's fast exit (it
    kills its samplers and removes their files), then stop waiting."""
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            display.finish()
            if not interruption.cancelled:
                interruption.cancelled = True
                print("cancelling... (Ctrl-C again to leave at once)", file=sys.stderr, flush=True)
                await worker.session.notify("$/cancelRequest", {"id": request_id})
                continue
            interruption.leaving = True
            print("studio-imagegen: stopping the worker now", file=sys.stderr, flush=True)
            await worker.interrupt_twice()
            with anyio.move_on_after(LEAVE_SECONDS):
                await worker.wait()
            interruption.left.set()
            waiting.cancel()
            return


def _report_error(response: Message) -> int:
    error = response["error"]
    print(terminal_safe(error_report(error)), file=sys.stderr)
    known = ErrorCode.from_code(error.get("code"))
    return EXIT_CODES.get(known, 1) if known else 1


if __name__ == "__main__":
    raise SystemExit(main())
