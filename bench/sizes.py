"""How much each measurement does: the full run, and the smoke run CI makes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    cold_start_runs: int = 15
    overhead_runs: int = 7
    overhead_steps: int = 20
    overhead_step_seconds: float = 0.05
    progress_runs: int = 3
    cancel_runs: int = 10
    stubborn_grace_ms: int = 500
    throughput_requests: int = 5000
    throughput_runs: int = 3
    memory_images: int = 8
    flood_bytes: int = 20 * 1024 * 1024
    preview_runs: int = 5
    reference_runs: int = 5
    diffusers_steps: int = 20
    diffusers_runs: int = 5
    switch_runs: int = 3
    real_architecture_runs: int = 3


SMOKE = Sizes(
    cold_start_runs=2,
    overhead_runs=1,
    overhead_steps=3,
    overhead_step_seconds=0.01,
    progress_runs=1,
    cancel_runs=2,
    stubborn_grace_ms=200,
    throughput_requests=200,
    throughput_runs=1,
    memory_images=2,
    flood_bytes=1024 * 1024,
    preview_runs=1,
    reference_runs=1,
    diffusers_steps=3,
    diffusers_runs=1,
    switch_runs=1,
)
