"""`capabilities`: what Studio reads before it draws the local provider's inspector."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fixtures.resources import make_resource_dir
from tests.worker_clients import LINUX, MACOS, in_process_worker, worker_environment
from worker.backends.coreml.settings import CoreMLSettings
from worker.backends.registry import read_settings
from worker.host import HostPlatform
from worker.settings import Settings


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


async def _capabilities(settings: Settings, host: HostPlatform = LINUX) -> dict[str, Any]:
    async with in_process_worker(settings, host) as worker:
        response = await worker.call("capabilities")
    result: dict[str, Any] = response["result"]
    return result


async def test_shape_limits_features_and_defaults() -> None:
    caps = await _capabilities(
        read_settings(
            {
                "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "32",
                "SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER": "dpmpp",
            }
        )
    )
    assert caps["protocolVersion"] == "1.7"
    assert caps["platform"] == {
        "os": "Linux",
        "osVersion": "6.1.0",
        "machine": "x86_64",
        "python": "3.11.7",
    }
    assert caps["limits"]["maxImageCount"] == 8
    assert caps["limits"]["stepCount"] == {"min": 1, "max": 80, "default": 32}
    assert caps["limits"]["guidanceScale"] == {"min": 0.0, "max": 30.0, "default": 7.5}
    assert caps["limits"]["timeoutMs"]["default"] == 480_000
    assert caps["limits"]["maxQueue"] == 32
    assert caps["limits"]["maxReferenceBytes"] == 50 * 1024 * 1024
    assert caps["limits"]["maxReferencePixels"] == 50_000_000
    assert caps["limits"]["strength"] == {"min": 0.0, "max": 1.0, "default": 0.55}
    assert caps["limits"]["previewEvery"] == {"min": 0, "max": 80, "default": 0}
    # Core ML makes only what its bundles were converted for: here the 1:1 one's size.
    assert (
        caps["limits"]["width"]
        == caps["limits"]["height"]
        == {
            "min": 512,
            "max": 512,
            "default": 512,
        }
    )
    (square,) = caps["features"].pop("aspectRatioBundles")
    assert (square["ratio"], square["width"], square["height"]) == ("1:1", 512, 512)
    assert square["present"] is False and square["problem"] == ""
    reason = caps["features"].pop("imageToImageReason")
    assert reason.startswith("Image-to-image needs VAEEncoder.mlmodelc, which is not in ")
    assert "To fix: install a bundle converted with its VAE encoder" in reason
    assert caps["features"] == {
        "textToImage": True,
        "imageToImage": False,
        "referenceInfluences": {"subtle": 0.75, "balanced": 0.55, "strong": 0.35},
        "aspectRatios": [],  # no bundle is installed
        "customSizes": False,
        "negativePrompt": True,
        "schedulers": ["pndm", "dpmpp"],
        "computeUnits": ["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"],
        "progress": True,
        "cancel": True,
        "previews": True,
        "previewMaxSide": 256,
        "qualityPresets": [
            {"name": "fast", "stepCount": 14, "guidanceScale": 7.0},
            {"name": "balanced", "stepCount": 20, "guidanceScale": 7.5},
            {"name": "high", "stepCount": 32, "guidanceScale": 8.0},
        ],
    }
    assert caps["defaults"] == {
        "stepCount": 32,
        "guidanceScale": 7.5,
        "scheduler": "dpmpp",
        "computeUnits": "cpuAndNeuralEngine",
        "disableSafety": True,
        "reduceMemory": False,
        "timeoutMs": 480_000,
    }
    assert caps["configErrors"] == []


async def test_core_ml_on_linux_is_unavailable_and_says_why(tmp_path: Path) -> None:
    settings = read_settings({}, home=tmp_path)
    backend = (await _capabilities(settings))["backend"]
    assert backend["id"] == "coreml_diffusion" and backend["available"] is False
    assert (
        "macOS 13.1" in backend["reason"]
        and "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN" in backend["reason"]
    )
    assert str(settings.section(CoreMLSettings).default_sample_bin) in backend["missing"]
    assert str(settings.section(CoreMLSettings).resource_path) in backend["missing"]
    hint = backend["installHint"]
    assert "swift build -c release --product StableDiffusionSample" in hint
    assert hint.count("studio-imagegen-worker install") == 1, hint  # both fixes are install
    assert hint.index("swift build") < hint.index(".zip from the Hugging Face repository")
    assert backend["modelId"] == (
        "local/macos-coreml-stable-diffusion-2-1-base-palettized:cpuAndNeuralEngine"
    )
    assert backend["testOnly"] is False


async def test_core_ml_on_macos_is_available_when_binary_and_resources_are_there(
    tmp_path: Path,
) -> None:
    settings = read_settings({}, home=tmp_path)
    _executable(settings.section(CoreMLSettings).default_sample_bin)
    make_resource_dir(settings.section(CoreMLSettings).resource_path)
    backend = (await _capabilities(settings, MACOS))["backend"]
    assert backend["available"] is True, backend["reason"]
    assert backend["missing"] == [] and backend["installHint"] == ""
    assert backend["sampleBinary"] == str(settings.section(CoreMLSettings).default_sample_bin)
    assert backend["resourcePath"] == str(settings.section(CoreMLSettings).resource_path)


async def test_old_macos_is_refused(tmp_path: Path) -> None:
    settings = read_settings({}, home=tmp_path)
    _executable(settings.section(CoreMLSettings).default_sample_bin)
    make_resource_dir(settings.section(CoreMLSettings).resource_path)
    old = HostPlatform(system="Darwin", os_version="12.6", machine="arm64", python="3.11.7")
    backend = (await _capabilities(settings, old))["backend"]
    assert backend["available"] is False and "macOS 13.1" in backend["reason"]


async def test_an_explicit_sampler_is_trusted_on_any_os_and_said_so(tmp_path: Path) -> None:
    sampler = _executable(tmp_path / "runner" / "forward-to-mac")
    resources = make_resource_dir(tmp_path / "res")
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(sampler),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(resources),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS": "cpuOnly",
        }
    )
    backend = (await _capabilities(settings, LINUX))["backend"]
    assert backend["available"] is True
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN" in backend["reason"]
    assert "trusted on any platform" in backend["reason"]
    assert backend["modelId"].endswith(":cpuOnly")


async def test_a_non_executable_explicit_sampler_is_named_with_the_fix(tmp_path: Path) -> None:
    sampler = tmp_path / "StableDiffusionSample"
    sampler.write_text("not executable")
    resources = make_resource_dir(tmp_path / "res")
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(sampler),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(resources),
        }
    )
    backend = (await _capabilities(settings))["backend"]
    assert backend["available"] is False
    assert backend["reason"] == f"The sampler {sampler} is not executable."
    assert backend["installHint"] == f"chmod +x {sampler}"


async def test_a_directory_named_as_the_sampler_is_not_a_program(tmp_path: Path) -> None:
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(tmp_path),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(make_resource_dir(tmp_path / "r")),
        }
    )
    backend = (await _capabilities(settings))["backend"]
    assert backend["reason"] == f"The sampler {tmp_path} is a directory, not a program."
    assert "chmod" not in backend["installHint"]
    assert ".build/release/StableDiffusionSample" in backend["installHint"]


async def test_a_file_named_as_the_resources_is_not_a_directory(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "hostname"
    not_a_directory.write_text("box\n")
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(_executable(tmp_path / "sampler")),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(not_a_directory),
        }
    )
    backend = (await _capabilities(settings))["backend"]
    assert backend["reason"] == (
        f"The model resource path {not_a_directory} is a file, not a directory."
    )
    assert "does not exist" not in backend["reason"]
    assert backend["missing"] == []


async def test_missing_resources_are_each_listed(tmp_path: Path) -> None:
    sampler = _executable(tmp_path / "sampler")
    resources = make_resource_dir(tmp_path / "res", omit=["Unet.mlmodelc", "merges.txt"])
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(sampler),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(resources),
        }
    )
    backend = (await _capabilities(settings))["backend"]
    assert backend["available"] is False
    assert backend["missing"] == [str(resources / "Unet.mlmodelc"), str(resources / "merges.txt")]
    assert "Unet.mlmodelc, merges.txt missing" in backend["reason"]
    assert "apple/coreml-stable-diffusion-2-1-base-palettized" in backend["installHint"]


async def test_split_unet_chunks_count_as_the_unet(tmp_path: Path) -> None:
    sampler = _executable(tmp_path / "sampler")
    resources = make_resource_dir(tmp_path / "res", omit=["Unet.mlmodelc"])
    for chunk in ("UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc"):
        (resources / chunk).mkdir()
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(sampler),
            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(resources),
        }
    )
    assert (await _capabilities(settings))["backend"]["available"] is True


async def test_installing_is_seen_by_the_next_call_without_a_restart(tmp_path: Path) -> None:
    settings = read_settings({}, home=tmp_path)
    async with in_process_worker(settings, MACOS) as worker:
        before = (await worker.call("capabilities", id_=1))["result"]["backend"]
        _executable(settings.section(CoreMLSettings).default_sample_bin)
        make_resource_dir(settings.section(CoreMLSettings).resource_path)
        after = (await worker.call("capabilities", id_=2))["result"]["backend"]
    assert before["available"] is False and after["available"] is True


async def test_sampler_on_path_is_found(tmp_path: Path, monkeypatch: Any) -> None:
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "stable-diffusion-sample")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = read_settings({}, home=tmp_path)
    make_resource_dir(settings.section(CoreMLSettings).resource_path)
    backend = (await _capabilities(settings, MACOS))["backend"]
    assert backend["available"] is True
    assert backend["sampleBinary"] == str(bin_dir / "stable-diffusion-sample")


async def test_mock_backend_is_available_and_marked_test_only() -> None:
    settings = read_settings({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"})
    backend = (await _capabilities(settings))["backend"]
    assert backend["id"] == "mock" and backend["available"] is True
    assert backend["testOnly"] is True
    assert backend["modelId"] == "local/macos-procedural-v1"
    assert "Test-only" in backend["reason"]


async def test_unknown_backend_and_config_errors_are_reported() -> None:
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "dalle",
            "SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE": "lots",
        }
    )
    caps = await _capabilities(settings)
    assert caps["backend"]["id"] == "dalle" and caps["backend"]["available"] is False
    assert "coreml_diffusion" in caps["backend"]["reason"]
    assert [e["variable"] for e in caps["configErrors"]] == [
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND",
        "SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE",
    ]
    assert caps["configErrors"][1]["value"] == "lots"
    assert caps["defaults"]["guidanceScale"] == 7.5


def test_start_and_capabilities_leave_the_generate_path_unloaded() -> None:
    """What a worker imports to start and answer `capabilities`, with either backend:
    never the generate path, what a backend renders with, Pillow, or torch (its cold start
    stays short). The plug-ins' faces are all it needs."""
    code = (
        "import sys\n"
        "from worker.app import build_server\n"
        "from worker.backends.registry import read_settings\n"
        "from worker.capabilities import describe_capabilities\n"
        "from worker.host import HostPlatform\n"
        "for backend in ('coreml', 'diffusers', 'mock'):\n"
        "    settings = read_settings({'SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND': backend})\n"
        "    build_server(settings, HostPlatform.current())\n"
        "    describe_capabilities(settings, HostPlatform.current())\n"
        "heavy = ('worker.generation', 'worker.parameters', 'worker.images',\n"
        "         'worker.backends.coreml.backend', 'worker.backends.coreml.sampler.process',\n"
        "         'worker.backends.diffusers.backend', 'worker.backends.diffusers.supervisor',\n"
        "         'worker.backends.diffusers.host_process', 'PIL', 'torch')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=worker_environment())
