from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.diffusers_setup import build_tiny_model, require_extra
from tests.standin import StandIn
from tests.worker_clients import WorkerProcess, start_worker_process


@pytest.fixture(scope="session", autouse=True)
def _hugging_face_cache_of_the_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The diffusers backend lists the pipelines of the Hugging Face cache: the suite's
    answers must not depend on what this machine has downloaded. Tests that want a cache
    give HF_HOME themselves."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        patch.delenv("HF_HUB_CACHE", raising=False)
        yield


@pytest.fixture
def worker_process() -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers as real subprocesses; any left running are killed after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> WorkerProcess:
        process = start_worker_process(env, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """A stand-in sampler setup; in-process workers see its variables and temp dir too.

    After the test, no process of the stand-in may be alive and no temp dir left."""
    stand_in = StandIn(tmp_path)
    for name, value in stand_in.env.items():
        if not name.startswith("SYSTEMSCULPT_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", str(stand_in.tmp))
    yield stand_in
    assert stand_in.live_processes() == [], "a sampler process outlived the test"
    assert stand_in.leftover_temp_entries() == [], "a job left its temp dir behind"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable Diffusion pipeline with random weights, built once per session."""
    require_extra()
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SDXL pipeline (two text encoders, added conditioning), built once."""
    require_extra()
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", "--family", "sdxl")


@pytest.fixture(scope="session")
def tiny_inpainting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD 1.x inpainting model (a 9-channel UNet), built once per session."""
    require_extra()
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-inpaint", "--inpainting")


@pytest.fixture(scope="session")
def tiny_controlnets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers models folder with two tiny ControlNets for the tiny SD 1.x model: one
    in its `controlnet/` folder, one beside the models. Built once per session."""
    require_extra()
    folder = tmp_path_factory.mktemp("controlnets")
    build_tiny_model(folder / "controlnet" / "tiny-canny", "--controlnet")
    build_tiny_model(folder / "tiny-depth", "--controlnet", "--seed", "1")
    return folder


@pytest.fixture(scope="session")
def tiny_loras(
    tiny_model: Path, tiny_sdxl: Path, tiny_sd3: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A LoRA folder: two tiny LoRAs for the tiny SD 1.x model (in a folder of their own,
    `sd1/`), one for the tiny SDXL model, one for the tiny SD 3 (whose transformer is as
    wide as the SD 1.x model's text: only its family tells them apart). Built once per
    session."""
    folder = tmp_path_factory.mktemp("loras")
    for name, model, seed in (
        ("sd1/style", tiny_model, 0),
        ("sd1/other", tiny_model, 1),
        ("xl-style", tiny_sdxl, 2),
        ("sd3-style", tiny_sd3, 3),
    ):
        build_tiny_model(
            folder / f"{name}.safetensors", "--lora-for", str(model), "--seed", str(seed)
        )
    return folder


@pytest.fixture(scope="session")
def tiny_taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers models folder holding a tiny TAESD for the tiny SD 1.x model."""
    require_extra()
    folder = tmp_path_factory.mktemp("taesd-models")
    build_tiny_model(folder / "taesd", "--taesd")
    return folder


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD3 pipeline (a one-layer transformer, no T5), built once."""
    require_extra()
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd3", "--family", "sd3")
