"""The diffusers backend's figures, with the tiny random-weight model (built here).

Its steps are fast (tens of milliseconds on a CPU), so what the worker and the model host
add shows plainly. Skipped, with a row that says so, where the extra is not installed.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
from PIL import Image

from bench.harness import REPO_ROOT, Row, StandInSetup, median, running_worker, timed_cancel
from bench.sizes import Sizes
from client.session import Message, WorkerSession
from fixtures.proc import proc_status_kib
from worker.backends.diffusers.checks import missing_modules

MODEL_SIDE = 64


async def diffusers_backend(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """Warm overhead, cold start, cancel latency, and the worker's memory."""
    missing = missing_modules()
    if missing:
        return [Row("diffusers: skipped", "-", [0.0], "extra missing", None, notes=str(missing))]
    model = await _tiny_model(setup, "tiny-sd", "sd1")
    sdxl = await _tiny_model(setup, "tiny-sdxl", "sdxl")
    folder = setup.tmp.parent / "diffusers-models"
    folder.mkdir(exist_ok=True)
    if not (folder / sdxl.name).exists():
        (folder / sdxl.name).symlink_to(sdxl, target_is_directory=True)
    controlnet = folder / "controlnet" / "tiny-canny"
    if not controlnet.exists():
        await _build(setup, [str(controlnet), "--controlnet"])
    if not (folder / "taesd").exists():
        await _build(setup, [str(folder / "taesd"), "--taesd"])
    for index, lora in enumerate(LORAS):
        if not (folder / "loras" / f"{lora}.safetensors").exists():
            where = str(folder / "loras" / f"{lora}.safetensors")
            await _build(setup, [where, "--lora-for", str(model), "--seed", str(index)])
    env = setup.env(
        SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND="diffusers",
        SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL=str(model),
        SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR=str(folder),
        HF_HUB_OFFLINE="1",
    )
    steps = sizes.diffusers_steps
    request = {"prompt": "a red fox in snow", "seed": 42, "stepCount": steps}
    rows = []
    async with running_worker(env) as worker:
        session = worker.session
        started = time.perf_counter()
        await session.call("generate", {**request, "stepCount": 2})
        cold = time.perf_counter() - started
        status = (await session.call("capabilities"))["result"]["backend"]["modelHost"]
        warm = await _warm_seconds(session, request, sizes.diffusers_runs)
        direct = direct_seconds(model, steps, sizes.diffusers_runs, setup.tmp)
        rows.append(
            _against_direct(
                f"diffusers: warm generate / direct pipeline call ({steps} steps, "
                f"{MODEL_SIDE}x{MODEL_SIDE})",
                warm,
                direct,
            )
        )
        rows.append(
            Row(
                "diffusers: cold first request / warm request",
                "x",
                [cold / median(warm)],
                "reported",
                None,
                notes=f"cold {cold:.2f} s (host start, imports, load, 2 steps); "
                f"load {status['lastLoadMs']} ms",
            )
        )
        rows.append(await _inpaint_row(session, request, warm, sizes.diffusers_runs))
        rows.append(await _controlnet_row(session, request, warm, sizes.diffusers_runs))
        rows += await _preview_rows(session, request, warm, sizes.diffusers_runs)
        rows.append(await _batch_row(session, request, sizes.diffusers_runs))
        rows += await _lora_rows(session, request, warm, sizes.diffusers_runs)
        rows.append(await _cancel_row(session, sizes.cancel_runs))
        host_peak = proc_status_kib(int(status["pid"]), "VmHWM") / 1024  # before a switch
        rows += await _sdxl_rows(session, sdxl, request, sizes, setup.tmp)
        worker_rss = proc_status_kib(worker.pid, "VmRSS") / 1024
    async with running_worker(setup.env(SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND="mock")) as mock:
        await mock.session.call("generate", {"prompt": "fox", "stepCount": 2})
        mock_rss = proc_status_kib(mock.pid, "VmRSS") / 1024
    rows.append(
        Row(
            "diffusers: worker RSS after jobs (torch never imported)",
            "MiB",
            [worker_rss],
            "mock's ±5",
            abs(worker_rss - mock_rss) <= 5,
            notes=f"the mock backend's worker {mock_rss:.1f} MiB after a job; "
            f"model host peak {host_peak:.0f} MiB",
        )
    )
    return rows


async def _tiny_model(setup: StandInSetup, name: str, family: str) -> Path:
    model = setup.tmp.parent / name
    if not model.exists():
        await _build(setup, [str(model), "--family", family])
    return model


async def _build(setup: StandInSetup, arguments: list[str]) -> None:
    """A tiny model or ControlNet of the fixtures, built in a process of its own."""
    await anyio.run_process(
        [sys.executable, "-m", "fixtures.tiny_diffusers", *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, "TMPDIR": str(setup.tmp)},
    )


async def _sdxl_rows(
    session: WorkerSession, sdxl: Path, request: dict[str, object], sizes: Sizes, tmp: Path
) -> list[Row]:
    """The tiny SDXL model through the worker against the same call made directly, and
    what switching models costs: the first job after the other model against a warm one."""
    chosen = {**request, "model": f"diffusers/{sdxl.name}"}
    switches = []
    for _ in range(sizes.switch_runs):
        await session.call("generate", {**request, "stepCount": 2})  # the SD 1.x model back
        started = time.perf_counter()
        response = await session.call("generate", chosen)
        switches.append(time.perf_counter() - started)
        assert "result" in response, response
    warm = await _warm_seconds(session, chosen, sizes.diffusers_runs)
    steps = sizes.diffusers_steps
    direct = direct_seconds(sdxl, steps, sizes.diffusers_runs, tmp)
    return [
        _against_direct(
            f"diffusers: tiny SDXL warm generate / direct call ({steps} steps)", warm, direct
        ),
        Row(
            "diffusers: switching model (reload) / warm job",
            "x",
            [switch / median(warm) for switch in switches],
            "reported",
            None,
            notes=f"a job for the other model {median(switches):.2f} s (a new host "
            f"loads it), a warm one {median(warm) * 1000:.0f} ms",
        ),
    ]


async def _warm_seconds(
    session: WorkerSession, request: dict[str, object], runs: int
) -> list[float]:
    """Each of `runs` generates of `request` through the worker, in seconds."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        response = await session.call("generate", request)
        seconds.append(time.perf_counter() - started)
        assert "result" in response, response
    return seconds


async def _inpaint_row(
    session: WorkerSession, request: dict[str, object], plain: list[float], runs: int
) -> Row:
    """A warm inpaint (the centre square of a reference repainted, the rest laid back)
    against a warm text-to-image of the same steps and size."""
    source = Image.new("RGB", (MODEL_SIDE, MODEL_SIDE), (200, 30, 30))
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (MODEL_SIDE // 4, MODEL_SIDE // 4, MODEL_SIDE * 3 // 4, MODEL_SIDE * 3 // 4))
    edit = {**request, "inputImages": [_png_item(source)], "mask": _png_item(mask)}
    inpaint = await _warm_seconds(session, edit, runs)
    return Row(
        "diffusers: warm inpaint / warm text-to-image (same steps)",
        "x",
        [median(inpaint) / median(plain)],
        "reported",
        None,
        notes=f"inpaint {median(inpaint) * 1000:.0f} ms (VAE encode of the reference and "
        f"the mask's composite included), text-to-image {median(plain) * 1000:.0f} ms",
    )


async def _controlnet_row(
    session: WorkerSession, request: dict[str, object], plain: list[float], runs: int
) -> Row:
    """A warm generate with one ControlNet (the tiny one, loaded by the first, untimed)
    against a warm text-to-image of the same steps and size."""
    edges = Image.new("RGB", (MODEL_SIDE, MODEL_SIDE), (0, 0, 0))
    edges.paste((255, 255, 255), (MODEL_SIDE // 4, 0, MODEL_SIDE // 4 + 2, MODEL_SIDE))
    controlled = {**request, "controls": [{"model": "tiny-canny", "image": _png_item(edges)}]}
    started = time.perf_counter()
    first = await session.call("generate", controlled)
    loading = time.perf_counter() - started
    assert "result" in first, first
    steered = await _warm_seconds(session, controlled, runs)
    return Row(
        "diffusers: warm ControlNet / warm text-to-image (same steps)",
        "x",
        [median(steered) / median(plain)],
        "reported",
        None,
        notes=f"with a ControlNet {median(steered) * 1000:.0f} ms (its pass each step), "
        f"text-to-image {median(plain) * 1000:.0f} ms; the first, loading it, "
        f"{loading * 1000:.0f} ms",
    )


async def _preview_rows(
    session: WorkerSession, request: dict[str, object], plain: list[float], runs: int
) -> list[Row]:
    """A preview after every step, from the latents (the default), by TAESD (loaded by
    a first, untimed job) and by a full decode, against no previews. The latent row,
    which has a target of a few percent, pairs each job with one without previews run
    right before it: a busy moment of the machine then falls on both of a pair."""
    pairs = []
    for _ in range(runs):
        (without,) = await _warm_seconds(session, request, 1)
        (with_previews,) = await _warm_seconds(session, {**request, "previewEvery": 1}, 1)
        pairs.append((without, with_previews))
    latent = [seconds for _, seconds in pairs]
    paired = [with_previews / without for without, with_previews in pairs]
    decoded = await _warm_seconds(
        session, {**request, "previewEvery": 1, "previewDecoder": "vae"}, runs
    )
    await session.call("generate", {**request, "previewEvery": 1, "previewDecoder": "taesd"})
    tiny = await _warm_seconds(
        session, {**request, "previewEvery": 1, "previewDecoder": "taesd"}, runs
    )
    return [
        Row(
            "diffusers: a latent preview every step / no previews",
            "x",
            paired,
            "<= 1.03",
            median(paired) <= 1.03,
            notes=f"{median(latent) * 1000:.0f} ms against "
            f"{median([without for without, _ in pairs]) * 1000:.0f} ms, in pairs",
        ),
        Row(
            "diffusers: a decoded preview every step / no previews",
            "x",
            [median(decoded) / median(plain)],
            "reported",
            None,
            notes=f"{median(decoded) * 1000:.0f} ms: a VAE decode each",
        ),
        Row(
            "diffusers: a TAESD preview every step / no previews",
            "x",
            [median(tiny) / median(plain)],
            "reported",
            None,
            notes=f"{median(tiny) * 1000:.0f} ms: the tiny TAESD's decode each (a real one "
            "is a few percent of a VAE's)",
        ),
    ]


LORAS = ("style", "other")


async def _batch_row(session: WorkerSession, request: dict[str, object], runs: int) -> Row:
    """Four images in one request (one pass where the device has room) against four
    requests of one image each, seeds 42 to 45 either way."""
    together, apart = [], []
    for _ in range(runs):
        started = time.perf_counter()
        response = await session.call("generate", {**request, "count": 4})
        together.append(time.perf_counter() - started)
        assert len(response["result"]["images"]) == 4, response
        started = time.perf_counter()
        for index in range(4):
            seed = int(str(request["seed"])) + index
            assert "result" in await session.call("generate", {**request, "seed": seed})
        apart.append(time.perf_counter() - started)
    return Row(
        "diffusers: count 4 in one request / four single requests",
        "x",
        [t / a for t, a in zip(together, apart, strict=True)],
        "reported",
        None,
        notes=f"one request {median(together) * 1000:.0f} ms, four {median(apart) * 1000:.0f} "
        "ms (the tiny model's steps are mostly overhead, which a batch shares)",
    )


async def _lora_rows(
    session: WorkerSession, request: dict[str, object], plain: list[float], runs: int
) -> list[Row]:
    """Requests that switch between two LoRAs (each loaded by a first, untimed one)
    against warm requests without any, and a weighted prompt against a plain one."""
    started = time.perf_counter()
    first = await session.call("generate", {**request, "loras": [{"name": LORAS[0]}]})
    loading = time.perf_counter() - started
    assert "result" in first, first
    await session.call("generate", {**request, "loras": [{"name": LORAS[1]}]})
    switching = []
    for run in range(runs):
        lora = {"name": LORAS[run % 2], "weight": 0.8}
        switching += await _warm_seconds(session, {**request, "loras": [lora]}, 1)
    weighted = await _warm_seconds(
        session, {**request, "prompt": "a (red:1.3) fox in [snow]"}, runs
    )
    return [
        Row(
            "diffusers: LoRA switch between two requests / a warm request",
            "x",
            [median(switching) / median(plain)],
            "reported",
            None,
            notes=f"switching {median(switching) * 1000:.0f} ms (adapters' pass each step "
            f"included), none {median(plain) * 1000:.0f} ms; the first, loading one, "
            f"{loading * 1000:.0f} ms",
        ),
        Row(
            "diffusers: weighted prompt / plain prompt",
            "x",
            [median(weighted) / median(plain)],
            "reported",
            None,
            notes=f"{median(weighted) * 1000:.0f} ms: the host encodes it itself",
        ),
    ]


def _png_item(image: Image.Image) -> dict[str, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"mimeType": "image/png", "base64": base64.b64encode(buffer.getvalue()).decode()}


def _against_direct(name: str, warm: list[float], direct: list[float]) -> Row:
    """Through the worker against the same call made directly: at most 5 % more."""
    ratios = [w / d for w, d in zip(warm, direct, strict=True)]
    return Row(
        name,
        "x",
        ratios,
        "<= 1.05",
        median(ratios) <= 1.05,
        notes=f"direct median {median(direct) * 1000:.0f} ms, through the worker "
        f"{median(warm) * 1000:.0f} ms",
    )


def direct_seconds(
    model: Path,
    steps: int,
    runs: int,
    tmp: Path,
    size: str = f"{MODEL_SIDE}x{MODEL_SIDE}",
    extra: tuple[str, ...] = (),
) -> list[float]:
    """The same call in a process of its own (the bench never imports torch); `extra`:
    more of `bench.direct_pipeline`'s options (its dtype, scheduler, guidance)."""
    command = [sys.executable, "-m", "bench.direct_pipeline", str(model)]
    options = ["--steps", str(steps), "--runs", str(runs), "--size", size, *extra]
    result = subprocess.run(
        [*command, *options],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "TMPDIR": str(tmp),  # torch's cache folder goes with the bench's
        },
    )
    seconds: list[float] = json.loads(result.stdout.splitlines()[-1])["seconds"]
    return seconds


async def _cancel_row(session: WorkerSession, runs: int) -> Row:
    """`cancel` to the -32800 answer, against the step time measured in the same job."""
    latencies, step_times = [], []
    for _ in range(runs):
        stamps: list[float] = []
        third = anyio.Event()

        def on_progress(
            message: Message, stamps: list[float] = stamps, third: anyio.Event = third
        ) -> None:
            if message["params"]["phase"] == "sampling" and message["params"]["step"]:
                stamps.append(time.perf_counter())
                if len(stamps) == 3:
                    third.set()

        with session.notifications(on_progress):
            request_id = await session.request("generate", {"prompt": "long", "stepCount": 80})
            await third.wait()
            latencies.append(await timed_cancel(session, request_id))
        step_times += [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
    step = median(step_times)
    return Row(
        "diffusers: cancel latency",
        "ms",
        latencies,
        "<= step + 50",
        median(latencies) <= step + 50,
        notes=f"a step takes {step:.0f} ms (median)",
    )
