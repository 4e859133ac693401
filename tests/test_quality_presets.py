"""Quality presets: what each sets, what wins over them, and how a person sees why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protocol.models import QUALITY_PRESETS, GenerateParams
from tests.standin import StandIn
from tests.worker_clients import WorkerProcess
from worker.backends.registry import read_settings
from worker.parameters import resolve_parameters

StartWorker = Callable[..., WorkerProcess]
PINNED_STEPS = {"SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "25"}


@pytest.mark.parametrize(
    ("spelling", "preset"),
    [("fast", "fast"), ("Draft", "fast"), (" High-Detail ", "high"), ("detail", "high")],
)
def test_the_later_providers_spellings_are_accepted(spelling: str, preset: str) -> None:
    assert GenerateParams.model_validate({"prompt": "x", "quality": spelling}).quality == preset


def test_an_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="use one of fast, balanced, high"):
        GenerateParams.model_validate({"prompt": "x", "quality": "turbo"})


def test_precedence_request_then_environment_then_preset_then_default() -> None:
    def resolve(env: dict[str, str], **request: Any) -> tuple[int, float, dict[str, str]]:
        parameters = resolve_parameters(
            GenerateParams.model_validate({"prompt": "x", **request}), read_settings(env)
        )
        sources = {k: str(parameters.sources[k]) for k in ("stepCount", "guidanceScale")}
        return parameters.sampling.step_count, parameters.sampling.guidance_scale, sources

    assert resolve({}, quality="fast") == (
        14,
        7.0,
        {"stepCount": "preset", "guidanceScale": "preset"},
    )
    assert resolve(PINNED_STEPS, quality="fast") == (
        25,
        7.0,
        {"stepCount": "environment", "guidanceScale": "preset"},
    )
    assert resolve(PINNED_STEPS, quality="high", stepCount=9) == (
        9,
        8.0,
        {"stepCount": "request", "guidanceScale": "preset"},
    )
    assert resolve({}) == (20, 7.5, {"stepCount": "default", "guidanceScale": "default"})


@pytest.mark.parametrize("pinned", [False, True], ids=["no pins", "steps pinned"])
def test_each_preset_over_real_stdio(
    standin: StandIn, worker_process: StartWorker, pinned: bool
) -> None:
    env = {**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0"}
    del env["SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT"]  # the stand-in's setup pins 4
    if pinned:
        env.update(PINNED_STEPS)
    worker = worker_process(env)
    caps = worker.call("capabilities")["result"]
    assert caps["features"]["qualityPresets"] == [
        preset.to_wire() for preset in QUALITY_PRESETS.values()
    ]
    for name, preset in QUALITY_PRESETS.items():
        params = {"prompt": "a fox", "quality": name}
        answer, notifications = worker.exchange("generate", params, name)
        progress = [n["params"] for n in notifications]
        metadata = answer["result"]["metadata"]
        steps = 25 if pinned else preset.step_count
        assert (metadata["stepCount"], metadata["guidanceScale"]) == (
            steps,
            preset.guidance_scale,
        )
        assert metadata["qualityPreset"] == name
        assert metadata["sources"]["stepCount"] == ("environment" if pinned else "preset")
        assert metadata["sources"]["guidanceScale"] == "preset"
        # pndm: the sampler's total is one more than the step count, known from the start
        assert {p["totalSteps"] for p in progress} == {steps + 1}


@pytest.mark.parametrize(
    ("request_fields", "quality", "influence"),
    [
        ({"qualityPreset": "draft"}, "fast", None),
        ({"quality": "high", "qualityPreset": "fast"}, "high", None),
        (
            {"quality": "high", "localOptions": {"quality": "fast", "referenceInfluence": "low"}},
            "fast",
            "subtle",
        ),
        ({"referenceInfluence": "High"}, None, "strong"),
    ],
)
def test_the_later_providers_request_shapes_pick_the_same_presets(
    request_fields: dict[str, Any], quality: str | None, influence: str | None
) -> None:
    """localOptions won over the top level, and qualityPreset was quality's other name."""
    params = GenerateParams.model_validate({"prompt": "x", **request_fields})
    assert (params.chosen_quality, params.chosen_influence) == (quality, influence)
