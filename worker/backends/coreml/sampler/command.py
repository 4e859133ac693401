"""The sampler's command line, built from one job's parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from worker.parameters import JobParameters


@dataclass(frozen=True)
class SamplerCommand:
    """Where the sampler and its files are, and what the job asks of it."""

    binary: Path
    resource_path: Path
    output_path: Path
    parameters: JobParameters
    reference_path: Path | None = None
    """The prepared reference image, for image-to-image."""
    pipeline: Literal["sd", "sdxl", "sd3"] = "sd"
    """Which of the sampler's pipelines the bundle needs (`--xl`, `--sd3`)."""
    controlnets: tuple[tuple[str, Path], ...] = ()
    """Each ControlNet the job runs (its name in the bundle's `controlnet/` folder) and its
    prepared image, in the order the sampler pairs them."""

    def argv(self) -> list[str]:
        """No shell is involved. Values go as `--option=value`, and the prompt after `--`,
        so no prompt text can ever be read as an option (swift-argument-parser rejects a
        next-argument value that starts with a dash)."""
        job = self.parameters
        sampling = job.sampling
        argv = [str(self.binary)]
        if self.controlnets:
            # Both take every word up to the next option: the option after them ends
            # them, so neither can take the prompt (or anything else) for a name.
            names, images = zip(*self.controlnets, strict=True)
            argv += ["--controlnet", *names, "--controlnet-inputs", *map(str, images)]
        argv += [
            f"--resource-path={self.resource_path}",
            f"--output-path={self.output_path}",
            f"--compute-units={sampling.compute_units}",
            f"--step-count={sampling.step_count}",
            f"--image-count={job.count}",
            f"--seed={job.seed}",
            f"--guidance-scale={sampling.guidance_scale:g}",
        ]
        if self.pipeline == "sdxl":
            argv.append("--xl")
        elif self.pipeline == "sd3":
            argv.append("--sd3")  # which runs its own scheduler: --scheduler is not passed
        if self.pipeline != "sd3":
            argv.append(f"--scheduler={sampling.scheduler}")
        if job.preview_every:
            argv.append(f"--save-every={job.preview_every}")
        if self.reference_path is not None and job.strength is not None:
            argv += [f"--image={self.reference_path}", f"--strength={job.strength:g}"]
        if job.negative_prompt:
            argv.append(f"--negative-prompt={job.negative_prompt}")
        if sampling.disable_safety:
            argv.append("--disable-safety")
        if sampling.reduce_memory:
            argv.append("--reduce-memory")
        return [*argv, "--", job.prompt]
