"""The sampler's command line, built from one job's effective parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.models import ComputeUnits, Scheduler


@dataclass(frozen=True)
class SamplerCommand:
    binary: Path
    resource_path: Path
    output_path: Path
    prompt: str
    negative_prompt: str
    compute_units: ComputeUnits
    step_count: int
    image_count: int
    seed: int
    guidance_scale: float
    scheduler: Scheduler
    disable_safety: bool
    reduce_memory: bool

    def argv(self) -> list[str]:
        """No shell is involved. Values go as `--option=value`, and the prompt after `--`,
        so no prompt text can ever be read as an option (swift-argument-parser rejects a
        next-argument value that starts with a dash)."""
        argv = [
            str(self.binary),
            f"--resource-path={self.resource_path}",
            f"--output-path={self.output_path}",
            f"--compute-units={self.compute_units}",
            f"--step-count={self.step_count}",
            f"--image-count={self.image_count}",
            f"--seed={self.seed}",
            f"--guidance-scale={self.guidance_scale:g}",
            f"--scheduler={self.scheduler}",
        ]
        if self.negative_prompt:
            argv.append(f"--negative-prompt={self.negative_prompt}")
        if self.disable_safety:
            argv.append("--disable-safety")
        if self.reduce_memory:
            argv.append("--reduce-memory")
        return [*argv, "--", self.prompt]
