"""`install --backend diffusers` and `doctor` for the diffusers backend, against a local
server that answers as the Hugging Face hub does (the real hub is not reachable here)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.fake_hub import COMMIT, Repository, serving
from tests.diffusers_setup import DiffusersSetup, require_extra
from tests.worker_clients import start_worker_process, worker_environment

pytestmark = pytest.mark.diffusers
REPO_ID = "studio-tests/tiny-sd"


@pytest.fixture
def hub(tiny_model: Path) -> Iterator[tuple[Repository, str]]:
    repo = Repository(REPO_ID, tiny_model)
    with serving(repo) as address:
        yield repo, address


def run_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=worker_environment(env),
    )


def test_install_downloads_into_the_cache_and_the_worker_then_generates(
    hub: tuple[Repository, str], tmp_path: Path
) -> None:
    repo, address = hub
    cache = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": address}
    installed = run_worker("install", "--backend", "diffusers", "--model", REPO_ID, env=cache)
    assert installed.returncode == 0, installed.stderr
    assert "[ ok ] model loads" in installed.stdout
    assert f"SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL={REPO_ID}" in installed.stdout
    snapshot = tmp_path / "hf" / "hub" / "models--studio-tests--tiny-sd" / "snapshots" / COMMIT
    assert (snapshot / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert any(
        request.startswith("GET /studio-tests/tiny-sd/resolve/") for request in repo.requests
    )

    # The worker finds it in the cache by its id, without the hub.
    setup = DiffusersSetup(tmp_path, Path(REPO_ID), HF_HOME=str(tmp_path / "hf"))
    setup.env["SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL"] = REPO_ID
    served = len(repo.requests)
    worker = start_worker_process(setup.env)
    try:
        backend = worker.call("capabilities")["result"]["backend"]
        assert backend["available"] is True
        assert backend["resourcePath"] == str(snapshot)
        response, _ = worker.exchange("generate", {"prompt": "from the cache", "stepCount": 3})
        assert response["result"]["modelId"] == f"diffusers/{REPO_ID}:cpu"
    finally:
        worker.close()
    assert len(repo.requests) == served, "generate must never ask the hub"

    again = run_worker("install", "--backend", "diffusers", "--model", REPO_ID, env=cache)
    assert again.returncode == 0, again.stderr
    downloads = [r for r in repo.requests if r.startswith("GET /studio-tests/tiny-sd/resolve/")]
    assert len(downloads) == len(repo.files()), "a second install downloads nothing again"


def test_install_of_a_repository_the_hub_lacks_fails_with_the_reason(
    hub: tuple[Repository, str], tmp_path: Path
) -> None:
    _, address = hub
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": address}
    result = run_worker("install", "--backend", "diffusers", "--model", "nobody/nothing", env=env)
    assert result.returncode == 2
    assert "nobody/nothing could not be downloaded" in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_names_the_missing_model_and_how_to_get_it(tmp_path: Path) -> None:
    require_extra()  # without it, that is what is reported first
    env = {
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
        "HF_HOME": str(tmp_path / "empty-cache"),
    }
    result = run_worker("doctor", "--json", env=env)
    assert result.returncode == 1
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["diffusers extra"]["status"] == "ok"
    assert checks["model"]["status"] == "fail"
    assert "is not in the Hugging Face cache" in checks["model"]["detail"]
    assert checks["model"]["fix"] == "studio-imagegen-worker install --backend diffusers"


def test_doctor_load_loads_the_model_in_the_host(tiny_model: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(tiny_model),
        "TMPDIR": str(scratch),
    }
    quick = run_worker("doctor", env=env)
    assert quick.returncode == 0, quick.stdout
    assert "model loads" not in quick.stdout
    loaded = run_worker("doctor", "--load", env=env)
    assert loaded.returncode == 0, loaded.stdout
    assert "[ ok ] model loads" in loaded.stdout
    assert "loaded on cpu (float32)" in loaded.stdout
    assert "ready" in loaded.stdout.splitlines()[-1]
    assert list(scratch.iterdir()) == [], "the load check left temp files behind"
