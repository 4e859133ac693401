"""The measurements, each returning rows for the table. Sizes come from `bench.sizes`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import anyio

from bench.diffusers_suite import diffusers_backend
from bench.harness import (
    Row,
    StandInSetup,
    median,
    percentile,
    running_worker,
    timed_cancel,
)
from bench.real_architecture import real_architecture
from bench.sizes import Sizes
from client.session import Message
from fixtures.proc import proc_status_kib
from protocol.models import GenerateParams
from worker.backends.coreml.sampler.command import SamplerCommand
from worker.backends.registry import read_settings
from worker.parameters import resolve_parameters

LITERAL_IMPORTS = "import jsonrpcserver, pydantic, anyio, PIL"
AS_USED_IMPORTS = "import jsonrpcserver, anyio, PIL.Image; from pydantic import BaseModel"
VALIDATING = (
    "import jsonrpcserver, anyio, PIL.Image; from pydantic import BaseModel\n"
    "class Answer(BaseModel):\n    id: int\nAnswer(id=1).model_dump_json()"
)
"""The floor of a program that answers with pydantic: its imports as used, and its first
model validated and serialized (pydantic builds its validators on first use)."""


def _time_command(argv: list[str], **kwargs: Any) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - started


async def cold_start(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """Spawn to `capabilities` answered, against a bare import of the dependencies."""
    env = setup.env()
    worker, literal, as_used, validating = [], [], [], []
    for _ in range(sizes.cold_start_runs):
        started = time.perf_counter()
        async with running_worker(env) as running:
            await running.session.call("capabilities")
            worker.append(time.perf_counter() - started)
        literal.append(_time_command([sys.executable, "-c", LITERAL_IMPORTS]))
        as_used.append(_time_command([sys.executable, "-c", AS_USED_IMPORTS]))
        validating.append(_time_command([sys.executable, "-c", VALIDATING]))
    ms = [s * 1000 for s in worker]
    rows = [Row("cold start: spawn to capabilities", "ms", ms, "", None)]
    literal_ratios = [w / b for w, b in zip(worker, literal, strict=True)]
    rows.append(
        Row(
            "cold start / bare imports (literal)",
            "x",
            literal_ratios,
            "",
            None,
            notes=f'`python -c "{LITERAL_IMPORTS}"`: median {median(literal) * 1000:.0f} ms. '
            "Not a floor: pydantic 2 loads its model machinery lazily, so this imports "
            "almost none of it; any program that validates pays it (the rows below)",
        )
    )
    for label, baseline, code in [
        ("as used", as_used, AS_USED_IMPORTS),
        ("as used, one model answered", validating, VALIDATING),
    ]:
        ratios = [w / b for w, b in zip(worker, baseline, strict=True)]
        shown = code.replace("\n", " ").replace(":  ", ": ")
        rows.append(
            Row(
                f"cold start / bare imports ({label})",
                "x",
                ratios,
                "<= 1.30",
                median(ratios) <= 1.30,
                notes=f'`python -c "{shown}"`: median {median(baseline) * 1000:.0f} ms',
            )
        )
    return rows


async def overhead(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """`generate` through the worker against the stand-in run directly, same arguments."""
    step_env = {"STANDIN_SD_SECONDS_PER_STEP": str(sizes.overhead_step_seconds)}
    env = setup.env(**step_env)
    direct, through = [], []
    async with running_worker(env) as worker:
        session = worker.session
        # Warm-up: the first generate also loads the generate path (once per worker).
        await session.call("generate", {"prompt": "warm-up", "stepCount": 2})
        request = {"prompt": "a red fox in snow", "seed": 42, "stepCount": sizes.overhead_steps}
        # The direct run gets the very arguments the worker resolves for the same request.
        parameters = resolve_parameters(GenerateParams.model_validate(request), read_settings(env))
        for run in range(sizes.overhead_runs):
            output = setup.outputs / f"direct-{run}"
            output.mkdir()
            command = SamplerCommand(
                binary=setup.standin.sampler,
                resource_path=setup.standin.resources,
                output_path=output,
                parameters=parameters,
            )
            # The same environment the worker's child gets.
            direct.append(_time_command(command.argv(), env={**os.environ, **env}))
            started = time.perf_counter()
            response = await session.call("generate", request)
            through.append(time.perf_counter() - started)
            assert "result" in response, response
    ratios = [t / d for t, d in zip(through, direct, strict=True)]
    added = [(t - d) * 1000 for t, d in zip(through, direct, strict=True)]
    return [
        Row(
            f"generate overhead ({sizes.overhead_steps} steps at "
            f"{sizes.overhead_step_seconds * 1000:.0f} ms)",
            "x",
            ratios,
            "<= 1.03",
            median(ratios) <= 1.03,
            notes=f"direct median {median(direct) * 1000:.0f} ms; "
            f"worker adds median {median(added):.0f} ms",
        )
    ]


async def progress_latency(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """From the stand-in writing a step line (it stamps the time) to the host reading it."""
    stamps = setup.tmp.parent / "stamps.txt"
    env = setup.env(
        STANDIN_SD_SECONDS_PER_STEP=str(sizes.overhead_step_seconds),
        STANDIN_SD_STAMP_FILE=str(stamps),
    )
    latencies: list[float] = []
    async with running_worker(env) as worker:
        for _ in range(sizes.progress_runs):
            stamps.write_text("")
            arrivals: dict[int, float] = {}

            def on_progress(message: Message, arrivals: dict[int, float] = arrivals) -> None:
                params = message["params"]
                if params["phase"] == "sampling" and params["step"] > 0:
                    arrivals[params["step"]] = time.time()

            with worker.session.notifications(on_progress):
                await worker.session.call(
                    "generate", {"prompt": "fox", "stepCount": sizes.overhead_steps}
                )
            for line in stamps.read_text().splitlines():
                index, stamped = line.split()
                completed = int(index) + 1
                if completed in arrivals:
                    latencies.append((arrivals[completed] - float(stamped)) * 1000)
    return [
        Row(
            "progress latency: step line to notification read",
            "ms",
            latencies,
            "p95 <= 25",
            bool(latencies) and percentile_ok(latencies, 25),
            notes=f"{len(latencies)} step lines",
        )
    ]


def percentile_ok(samples: list[float], limit: float) -> bool:
    return percentile(samples, 95) <= limit


async def cancel_latency(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """`cancel` sent to the -32800 answer read, the sampler's process group gone by then."""
    rows = []
    cases = [
        ("obeys SIGTERM", "standin:hang=1", 2000, 150),
        (
            f"ignores SIGTERM, grace {sizes.stubborn_grace_ms} ms",
            "standin:hang=1 standin:ignore_sigterm=1",
            sizes.stubborn_grace_ms,
            sizes.stubborn_grace_ms + 150,
        ),
    ]
    for label, steering, grace_ms, target_ms in cases:
        env = setup.env(SYSTEMSCULPT_LOCAL_DIFFUSION_KILL_GRACE_MS=str(grace_ms))
        samples: list[float] = []
        async with running_worker(env) as worker:
            session = worker.session
            for _ in range(sizes.cancel_runs):
                sampling = anyio.Event()

                def on_progress(message: Message, sampling: anyio.Event = sampling) -> None:
                    if message["params"]["phase"] == "sampling":
                        sampling.set()

                with session.notifications(on_progress):
                    request_id = await session.request("generate", {"prompt": f"fox {steering}"})
                    await sampling.wait()
                samples.append(await timed_cancel(session, request_id))
        rows.append(
            Row(
                f"cancel latency ({label})",
                "ms",
                samples,
                f"p95 <= {target_ms}",
                percentile_ok(samples, target_ms),
            )
        )
    return rows


async def throughput(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """Pipelined `capabilities` requests, all written before any answer is awaited."""
    rates = []
    async with running_worker(setup.env()) as worker:
        session = worker.session
        for _ in range(sizes.throughput_runs):
            started = time.perf_counter()
            ids = [await session.request("capabilities") for _ in range(sizes.throughput_requests)]
            for id_ in ids:
                await session.response(id_)
            rates.append(sizes.throughput_requests / (time.perf_counter() - started))
    return [
        Row(
            f"throughput: {sizes.throughput_requests} pipelined capabilities",
            "req/s",
            rates,
            ">= 2000",
            median(rates) >= 2000,
        )
    ]


async def memory(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """Idle resident memory, and the peak while returning base64 images."""
    async with running_worker(setup.env(STANDIN_SD_SECONDS_PER_STEP="0")) as worker:
        await worker.session.call("capabilities")
        idle = proc_status_kib(worker.pid, "VmRSS") / 1024
        response = await worker.session.call(
            "generate", {"prompt": "fox", "count": sizes.memory_images, "stepCount": 2}
        )
        assert len(response["result"]["images"]) == sizes.memory_images, response
        peak = proc_status_kib(worker.pid, "VmHWM") / 1024
    return [
        Row("memory: idle RSS", "MiB", [idle], "reported", None),
        Row(
            f"memory: peak RSS returning {sizes.memory_images} base64 images",
            "MiB",
            [peak],
            "reported",
            None,
        ),
    ]


async def output_flood(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """A sampler that prints megabytes without a newline: the reader must stay linear."""
    env = setup.env(STANDIN_SD_SECONDS_PER_STEP="0")
    plain: list[float] = []
    flooded: list[float] = []
    async with running_worker(env) as worker:
        await worker.session.call("generate", {"prompt": "warm-up", "stepCount": 2})
        for _ in range(3):
            for prompt, times in (
                ("fox", plain),
                (f"fox standin:flood_bytes={sizes.flood_bytes}", flooded),
            ):
                started = time.perf_counter()
                response = await worker.session.call("generate", {"prompt": prompt, "stepCount": 2})
                times.append((time.perf_counter() - started) * 1000)
                assert "result" in response, response
    extra = median(flooded) - median(plain)
    mib = sizes.flood_bytes / (1 << 20)
    return [
        Row(
            f"output flood: a job printing {mib:.0f} MiB without a newline",
            "ms",
            flooded,  # times, not differences: on a busy machine a difference can be < 0
            "reported (was 53 s for 20 MiB)",
            None,
            notes=f"the same job without it: {median(plain):.0f} ms; "
            f"{max(extra, 0) / mib:.1f} ms per MiB",
        )
    ]


async def previews(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """A generate with a preview after every step against the same without previews."""
    env = setup.env(STANDIN_SD_SECONDS_PER_STEP=str(sizes.overhead_step_seconds))
    plain: list[float] = []
    previewed: list[float] = []
    request = {"prompt": "a red fox", "seed": 1, "stepCount": sizes.overhead_steps}
    async with running_worker(env) as worker:
        await worker.session.call("generate", {"prompt": "warm-up", "stepCount": 2})
        for _ in range(sizes.preview_runs):
            for extra, times in (({}, plain), ({"previewEvery": 1}, previewed)):
                started = time.perf_counter()
                response = await worker.session.call("generate", {**request, **extra})
                times.append(time.perf_counter() - started)
                assert "result" in response, response
    ratios = [p / q for p, q in zip(previewed, plain, strict=True)]
    per_preview = (median(previewed) - median(plain)) / (sizes.overhead_steps + 1) * 1000
    return [
        Row(
            f"previews: every step of {sizes.overhead_steps} / none",
            "x",
            ratios,
            "reported",
            None,
            notes=f"{per_preview:.1f} ms more a preview here (the stand-in's PNG write and the "
            "worker's thumbnail); on a Mac each is also a VAE decode",
        )
    ]


async def reference_preparation(setup: StandInSetup, sizes: Sizes) -> list[Row]:
    """Checking and preparing a 4000x3000 camera JPEG (EXIF-rotated) as a reference."""
    import base64
    import io

    from PIL import Image

    from protocol.models import InputImage
    from worker.reference import prepare_reference

    photo = Image.new("RGB", (4000, 3000), (30, 90, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif, quality=85)
    item = InputImage(mime_type="image/jpeg", base64=base64.b64encode(buffer.getvalue()).decode())
    samples = []
    for _ in range(sizes.reference_runs):
        started = time.perf_counter()
        prepare_reference(item, 0, (512, 512))
        samples.append((time.perf_counter() - started) * 1000)
    return [
        Row(
            "reference preparation: 4000x3000 JPEG to 512x512",
            "ms",
            samples,
            "reported",
            None,
            notes=f"{len(buffer.getvalue()) / (1 << 20):.1f} MiB, sent as base64",
        )
    ]


SUITES = {
    "cold-start": cold_start,
    "overhead": overhead,
    "progress": progress_latency,
    "cancel": cancel_latency,
    "throughput": throughput,
    "memory": memory,
    "output-flood": output_flood,
    "previews": previews,
    "reference": reference_preparation,
    "diffusers": diffusers_backend,
    "real-architecture": real_architecture,
}
OPT_IN = {"real-architecture"}
"""Suites run only when asked for by name (or `--real-architecture`)."""
