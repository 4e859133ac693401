"""What StableDiffusionSample's schedulers do with a step count and a strength.

Read from apple/ml-stable-diffusion (`Scheduler.swift`, `PNDMScheduler`,
`DPMSolverMultistepScheduler`, `StableDiffusionPipeline.generateImages`): how many step
lines a run prints, and which combinations make the Swift runtime trap (the process dies
by SIGTRAP, after loading the model) instead of producing an image.
"""

from __future__ import annotations

import math

from protocol.models import Scheduler
from worker.file_names import float32

PNDM_MIN_STEPS = 2
"""`PNDMScheduler.init` with one step takes `.last!` of an empty list and traps."""


def start_step(step_count: int, strength: float) -> int:
    """`max(N - Int(Float(N) * strength), 0)`: the first timestep an image-to-image run
    uses (`calculateTimesteps` and `addNoise`)."""
    return max(step_count - math.trunc(float32(float32(step_count) * float32(strength))), 0)


def scheduler_length(step_count: int, scheduler: Scheduler) -> int:
    """The scheduler's timestep list: PNDM adds one step, DPM-Solver++ does not."""
    return step_count + 1 if scheduler == "pndm" else step_count


def is_image_to_image(strength: float | None) -> bool:
    """The pipeline ignores a starting image unless strength < 1 (`Configuration.mode`)."""
    return strength is not None and float32(strength) < 1.0


def timestep_count(step_count: int, scheduler: Scheduler, strength: float | None = None) -> int:
    """The `M` of the sampler's `Step N of M` lines."""
    length = scheduler_length(step_count, scheduler)
    if strength is None or not is_image_to_image(strength):
        return length
    return length - start_step(step_count, strength)


def schedule_problems(
    step_count: int, scheduler: Scheduler, strength: float | None = None
) -> list[tuple[str, str]]:
    """(field, reason) for each combination the sampler would trap on, with the fix."""
    problems = []
    if scheduler == "pndm" and step_count < PNDM_MIN_STEPS:
        problems.append(
            (
                "stepCount",
                f"the pndm scheduler needs at least {PNDM_MIN_STEPS} steps (the sampler "
                "crashes with 1); raise stepCount or use the dpmpp scheduler",
            )
        )
    if strength is not None and is_image_to_image(strength):
        if float32(strength) <= 0:
            problems.append(
                ("strength", "must be greater than 0 (the sampler crashes at 0 or below)")
            )
        elif start_step(step_count, strength) >= scheduler_length(step_count, scheduler):
            lowest = math.ceil(1 / step_count * 1000) / 1000
            other = "" if scheduler == "flow_match" else ", or the pndm scheduler"
            problems.append(
                (
                    "strength",
                    f"with {step_count} {scheduler} steps a strength of {strength:g} runs no "
                    f"step and the sampler crashes; use a strength of at least {lowest:g} or "
                    f"more steps{other}",
                )
            )
    return problems
