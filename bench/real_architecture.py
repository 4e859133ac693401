"""Opt-in (`python -m bench --real-architecture`): the diffusers backend at real scale, on
a random-weight model of Stable Diffusion 1.5's exact architecture built locally (no
download; about 4 GB, kept in the user's cache for the next run). 256x256, 8 Euler
steps, guidance 7.5, as the figures other tools are compared at; rounds interleaved so
that a busy moment of the machine falls on every variant alike.

Rows: the worker's default precision (`auto`: bfloat16 on a CPU that does it in
hardware) against the worker in float32, with how far its image is from the float32
one; and the worker in float32 against the same pipeline called directly in float32.
"""

from __future__ import annotations

import base64
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


def model_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "studio-imagegen-worker" / "bench" / "sd15-shaped"


async def real_architecture(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    missing = missing_modules()
    if missing:
        return [Row("real architecture: skipped", "-", [0.0], "extra missing", None)]
    model = model_path()
    if not (model / "model_index.json").is_file():
        await anyio.run_process(
            [sys.executable, "-m", "fixtures.real_architecture", str(model)],
            cwd=REPO_ROOT,
            env={**os.environ, "TMPDIR": str(setup.tmp)},
        )
    base = {
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(model),
        "HF_HUB_OFFLINE": "1",
    }
    runs = max(1, sizes.real_architecture_runs)
    seconds: dict[str, list[float]] = {"auto": [], "float32": []}
    images: dict[str, Image.Image] = {}
    dtypes: dict[str, str] = {}
    async with (
        running_worker(setup.env(**base)) as default,
        running_worker(setup.env(**base, SYSTEMSCULPT_LOCAL_DIFFUSERS_DTYPE="float32")) as f32,
    ):
        workers = {"auto": default, "float32": f32}
        for worker in workers.values():  # the loads, and a warm-up each
            answer = await worker.session.call("generate", {**REQUEST, "stepCount": 1})
            assert "result" in answer, answer
        for _ in range(runs):
            for name, worker in workers.items():
                started = time.perf_counter()
                answer = await worker.session.call("generate", REQUEST)
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
    return [
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
    ]
