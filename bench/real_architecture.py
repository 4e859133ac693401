"""Opt-in (`python -m bench --real-architecture`): the diffusers backend at real scale, on
a random-weight model of Stable Diffusion 1.5's exact architecture built locally (no
download; about 4 GB, kept in the user's cache for the next run). 256x256, 8 Euler
steps, guidance 7.5, as the figures other tools are compared at; rounds interleaved so
that a busy moment of the machine falls on every variant alike.

Rows: the worker's default precision (`auto`: bfloat16 on a CPU that does it in
hardware) against the worker in float32, with how far its image is from the float32
one; the worker in float32 against the same pipeline called directly in float32; and
the model host's memory while it loads in the default precision, against what it holds
once loaded (converting must not hold the float32 weights and their copy at once); and
what a LoRA of rank 16 (on the UNet's attention and the text encoder, as shared ones
are) costs an image in the default precision, requests with and without it alternating,
so that every one of them also switches the adapters on or off.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import sys
import time
from pathlib import Path

import anyio
from PIL import Image, ImageChops, ImageStat

from bench.diffusers_suite import direct_seconds
from bench.harness import REPO_ROOT, Row, StandInSetup, median, running_worker
from bench.sizes import Sizes
from client.session import WorkerSession
from fixtures.proc import proc_status_kib
from worker.backends.diffusers.checks import missing_modules

SIZE, STEPS = 256, 8
REQUEST = {
    "prompt": "a red fox in snow",
    "seed": 42,
    "width": SIZE,
    "height": SIZE,
    "stepCount": STEPS,
    "scheduler": "euler",
    "guidanceScale": 7.5,
}


async def _first_job_memory(worker_pid: int, session: WorkerSession) -> tuple[float, float, float]:
    """The model host's anonymous memory (its own, not file pages) at its peak while it
    loads the model and runs a first job, what it holds after, and its peak resident
    size, in GiB."""
    peak = 0.0
    host = 0
    done = anyio.Event()

    async def poll() -> None:
        nonlocal peak, host
        while not done.is_set():
            host = host or _child(worker_pid)
            if host:
                with contextlib.suppress(OSError, LookupError):
                    peak = max(peak, proc_status_kib(host, "RssAnon") / GIB)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as group:
        group.start_soon(poll)
        answer = await session.call("generate", {**REQUEST, "stepCount": 1})
        done.set()
    assert "result" in answer, answer
    return peak, proc_status_kib(host, "RssAnon") / GIB, proc_status_kib(host, "VmHWM") / GIB


GIB = 1024 * 1024


def _child(pid: int) -> int:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0


LORA_RANK = 16
LORA = {"loras": [{"name": "style", "weight": 0.8}]}


def model_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "studio-imagegen-worker" / "bench" / "sd15-shaped"


async def _built(command: list[str], made: Path, setup: StandInSetup) -> None:
    """Run the fixture `command` unless what it makes is already in the cache."""
    if not await anyio.Path(made).is_file():
        await anyio.run_process(
            [sys.executable, "-m", *command],
            cwd=REPO_ROOT,
            env={**os.environ, "TMPDIR": str(setup.tmp)},
        )


async def real_architecture(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    missing = missing_modules()
    if missing:
        return [Row("real architecture: skipped", "-", [0.0], "extra missing", None)]
    model = model_path()
    await _built(["fixtures.real_architecture", str(model)], model / "model_index.json", setup)
    loras = model.with_name(f"{model.name}-loras")
    lora_file = loras / "style.safetensors"
    await _built(
        [
            "fixtures.tiny_diffusers",
            str(lora_file),
            "--lora-for",
            str(model),
            "--lora-rank",
            str(LORA_RANK),
        ],
        lora_file,
        setup,
    )
    base = {
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(model),
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_LORAS_DIR": str(loras),
        "HF_HUB_OFFLINE": "1",
    }
    runs = max(1, sizes.real_architecture_runs)
    seconds: dict[str, list[float]] = {"auto": [], "float32": [], "lora": []}
    images: dict[str, Image.Image] = {}
    dtypes: dict[str, str] = {}
    async with (
        running_worker(setup.env(**base)) as default,
        running_worker(setup.env(**base, SYSTEMSCULPT_LOCAL_DIFFUSERS_DTYPE="float32")) as f32,
    ):
        workers = {"auto": default, "float32": f32, "lora": default}
        memory = await _first_job_memory(default.pid, default.session)  # its load
        for name, worker in workers.items():  # the loads (the LoRA's too), and a warm-up
            request = {**REQUEST, "stepCount": 1, **(LORA if name == "lora" else {})}
            answer = await worker.session.call("generate", request)
            assert "result" in answer, answer
        for _ in range(runs):
            for name, worker in workers.items():
                request = {**REQUEST, **(LORA if name == "lora" else {})}
                started = time.perf_counter()
                answer = await worker.session.call("generate", request)
                seconds[name].append(time.perf_counter() - started)
                result = answer["result"]
                data = base64.b64decode(result["images"][0]["base64"])
                images[name] = Image.open(io.BytesIO(data)).convert("RGB")
                dtypes[name] = (
                    f"{result['metadata']['dtype']} ({result['metadata']['dtypeReason']})"
                )
    direct = direct_seconds(
        model,
        STEPS,
        runs,
        setup.tmp,
        size=f"{SIZE}x{SIZE}",
        extra=("--dtype", "float32", "--scheduler", "euler", "--guidance", "7.5"),
    )
    difference = ImageChops.difference(images["auto"], images["float32"])
    levels = sum(ImageStat.Stat(difference).mean) / 3
    speedup = median(seconds["auto"]) / median(seconds["float32"])
    peak, held, high_water = memory
    return [
        Row(
            "real architecture: load memory peak / memory held after it (default precision)",
            "x",
            [peak / held],
            "<= 1.05",
            peak / held <= 1.05,
            notes=f"anonymous memory: peak {peak:.2f} GiB, held {held:.2f} GiB after the "
            f"first job; the peak resident size {high_water:.2f} GiB also counts the "
            "float32 files' pages read while converting (page cache, reclaimable)",
        ),
        Row(
            "real architecture: worker default / worker float32",
            "x",
            [a / f for a, f in zip(seconds["auto"], seconds["float32"], strict=True)],
            "<= 0.50",
            speedup <= 0.5,
            notes=f"default {median(seconds['auto']):.1f} s an image, {dtypes['auto']}; "
            f"float32 {median(seconds['float32']):.1f} s; the images differ by "
            f"{levels:.2f} levels of 255 on average",
        ),
        Row(
            "real architecture: worker float32 / direct float32",
            "x",
            [w / d for w, d in zip(seconds["float32"], direct, strict=True)],
            "<= 1.05",
            median(seconds["float32"]) / median(direct) <= 1.05,
            notes=f"direct {median(direct):.1f} s an image",
        ),
        Row(
            f"real architecture: a rank-{LORA_RANK} LoRA, switched on each time / no LoRA",
            "x",
            [lo / a for lo, a in zip(seconds["lora"], seconds["auto"], strict=True)],
            "-",
            None,
            notes=f"with the LoRA {median(seconds['lora']):.1f} s an image (default "
            "precision); the requests alternate, so each one switches the adapters",
        ),
    ]
