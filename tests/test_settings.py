from __future__ import annotations

from pathlib import Path

import pytest

from worker.backends.coreml.settings import (
    DEFAULT_RESOURCE_PATH,
    DEFAULT_SAMPLE_BIN,
    CoreMLSettings,
)
from worker.backends.registry import read_settings
from worker.settings import (
    ENV_BACKEND,
    ENV_LOG_LEVEL,
    ENV_STEP_COUNT,
    Settings,
)

HOME = Path("/home/someone")


def settings(**env: str) -> Settings:
    return read_settings(env, home=HOME)


def test_defaults_are_the_original_providers() -> None:
    s = settings()
    assert (s.backend, s.compute_units, s.step_count, s.guidance_scale) == (
        "coreml_diffusion",
        "cpuAndNeuralEngine",
        20,
        7.5,
    )
    assert (s.scheduler, s.disable_safety, s.reduce_memory, s.timeout_ms) == (
        "pndm",
        True,
        False,
        480_000,
    )
    assert s.section(CoreMLSettings).sample_bin is None
    assert s.section(CoreMLSettings).default_sample_bin == HOME / DEFAULT_SAMPLE_BIN
    assert s.section(CoreMLSettings).resource_path == HOME / DEFAULT_RESOURCE_PATH
    assert s.problems == ()


@pytest.mark.parametrize(
    ("value", "backend"),
    [
        ("", "coreml_diffusion"),
        ("coreml", "coreml_diffusion"),
        ("CoreML_Diffusion", "coreml_diffusion"),
        ("mock", "mock"),
        (" procedural ", "mock"),
    ],
)
def test_backend_names(value: str, backend: str) -> None:
    assert settings(SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND=value).backend == backend


def test_unknown_backend_is_a_problem_naming_both_valid_values() -> None:
    s = settings(SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND="dalle")
    assert s.backend is None
    (problem,) = s.problems
    assert problem.variable == ENV_BACKEND and problem.value == "dalle"
    assert "coreml_diffusion" in problem.reason and "mock" in problem.reason


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT", "500", "step_count", 80),
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT", "0", "step_count", 1),
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT", "12.9", "step_count", 12),
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE", "31", "guidance_scale", 30.0),
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE", "-1", "guidance_scale", 0.0),
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE", "3.25", "guidance_scale", 3.25),
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS", "10", "timeout_ms", 30_000),
        ("SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS", "99999999", "timeout_ms", 1_800_000),
    ],
)
def test_numbers_are_clamped_and_the_clamp_is_logged(
    variable: str, value: str, attribute: str, expected: float
) -> None:
    s = settings(**{variable: value})
    assert getattr(s, attribute) == expected
    assert s.problems == ()
    if float(value) != expected and not value.endswith(".9"):
        assert any(variable in line for line in s.adjustments)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "20steps"])
def test_a_number_that_is_not_a_number_keeps_the_default_and_is_a_problem(value: str) -> None:
    s = settings(SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT=value)
    assert s.step_count == 20
    (problem,) = s.problems
    assert problem.variable == ENV_STEP_COUNT and problem.value == value
    assert "1 to 80" in problem.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("NO", False),
        ("off", False),
    ],
)
def test_booleans(value: str, expected: bool) -> None:
    s = settings(
        SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY=value,
        SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY=value,
    )
    assert (s.disable_safety, s.reduce_memory) == (expected, expected)


def test_an_unreadable_boolean_keeps_the_default_and_is_a_problem() -> None:
    s = settings(SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY="maybe")
    assert s.disable_safety is True
    assert [p.variable for p in s.problems] == ["SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY"]


def test_compute_units_and_scheduler_are_matched_without_case_and_checked() -> None:
    s = settings(
        SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS="cpuandgpu",
        SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER="DPMPP",
    )
    assert (s.compute_units, s.scheduler) == ("cpuAndGPU", "dpmpp")
    bad = settings(
        SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS="gpu",
        SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER="euler",
    )
    assert (bad.compute_units, bad.scheduler) == ("cpuAndNeuralEngine", "pndm")
    reasons = {p.variable: p.reason for p in bad.problems}
    assert "cpuAndNeuralEngine" in reasons["SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS"]
    assert "dpmpp" in reasons["SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER"]


def test_paths_expand_the_home_directory() -> None:
    s = settings(
        SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN="~/bin/sampler",
        SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH="/models/sd",
    )
    assert s.section(CoreMLSettings).sample_bin == Path("~/bin/sampler").expanduser()
    assert s.section(CoreMLSettings).resource_path == Path("/models/sd")


def test_a_bad_log_level_keeps_the_default_and_is_a_problem() -> None:
    s = settings(**{ENV_LOG_LEVEL: "chatty"})
    assert s.log_level == "info"
    assert [p.variable for p in s.problems] == [ENV_LOG_LEVEL]


def test_settings_are_immutable() -> None:
    s = settings()
    with pytest.raises(AttributeError):
        s.step_count = 3  # type: ignore[misc]
