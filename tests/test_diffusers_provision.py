"""`install --backend diffusers` and `doctor` for the diffusers backend, against a local
server that answers as the Hugging Face hub does (the real hub is not reachable here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.fake_hub import COMMIT, Repository, serving
from tests.diffusers_setup import DiffusersSetup, require_extra
from tests.worker_clients import REPO_ROOT, start_worker_process, worker_environment
from worker.backends.diffusers.checks import DEFAULT_REVISION
from worker.backends.diffusers.host.precision import hardware_bfloat16

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
    precision = "bfloat16" if hardware_bfloat16() else "float32"  # auto, on this CPU
    assert f"loaded on cpu ({precision})" in loaded.stdout
    assert "rendered a 64x64 image in one step" in loaded.stdout
    assert "ready" in loaded.stdout.splitlines()[-1]
    assert list(scratch.iterdir()) == [], "the load check left temp files behind"


def _copy_of(model: Path, where: Path) -> Path:
    copy = where / "copy-of-tiny-sd"
    shutil.copytree(model, copy)
    return copy


def test_a_model_without_a_listed_component_is_not_ready_and_names_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    broken = _copy_of(tiny_model, tmp_path)
    shutil.rmtree(broken / "tokenizer")
    env = {
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(broken),
    }
    doctor = run_worker("doctor", "--json", env=env)
    assert doctor.returncode == 1
    checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
    assert checks["model"]["status"] == "fail"
    said = "its model_index.json lists tokenizer (CLIPTokenizer), but tokenizer/ is not there"
    assert said in checks["model"]["detail"]
    worker = start_worker_process(env)
    try:
        backend = worker.call("capabilities")["result"]["backend"]
        assert backend["available"] is False and said in backend["reason"]
        response = worker.call("generate", {"prompt": "fox"})
        assert response["error"]["code"] == -32002 and said in response["error"]["message"]
    finally:
        worker.close()


def test_doctor_load_renders_a_step_and_catches_a_model_that_loads_but_cannot_render(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A tokenizer whose limit no integer holds loads fine and fails on the first prompt,
    as a model saved without its tokenizer settings does."""
    broken = _copy_of(tiny_model, tmp_path)
    config = broken / "tokenizer" / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["model_max_length"] = 10**30
    config.write_text(json.dumps(settings))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(broken),
        "TMPDIR": str(scratch),
    }
    assert run_worker("doctor", env=env).returncode == 0  # its files are all there
    loaded = run_worker("doctor", "--load", env=env)
    assert loaded.returncode == 1, loaded.stdout
    assert "[FAIL] model loads" in loaded.stdout
    assert "loaded, but rendering one step failed: OverflowError" in loaded.stdout
    assert list(scratch.iterdir()) == []


def _stable_diffusion_1_checkpoint(path: Path) -> Path:
    """A .safetensors file with a key of Stable Diffusion 1.x's layout (all the family
    detection reads), written by hand: one float32 tensor."""
    header = {
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": {
            "dtype": "F32",
            "shape": [1],
            "data_offsets": [0, 4],
        }
    }
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"\0\0\0\0")
    return path


def test_a_single_file_checkpoint_without_its_configuration_names_it_and_the_fetch(
    tmp_path: Path,
) -> None:
    require_extra()
    checkpoint = _stable_diffusion_1_checkpoint(tmp_path / "my-model.safetensors")
    setup = DiffusersSetup(tmp_path, checkpoint, HF_HOME=str(tmp_path / "empty-cache"))
    worker = start_worker_process(setup.env)
    try:
        response, _ = worker.exchange("generate", {"prompt": "fox", "stepCount": 2}, timeout=120)
    finally:
        worker.close()
    error = response["error"]
    assert error["code"] == -32002
    message = error["message"]
    assert "my-model.safetensors is a single-file Stable Diffusion 1.x checkpoint" in message
    assert "configuration of stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert error["data"]["installHint"] == (
        "fetch it once: studio-imagegen-worker install --backend diffusers --model "
        "stable-diffusion-v1-5/stable-diffusion-v1-5 --config-only"
    )
    assert "HF_HUB_OFFLINE" not in message


def test_install_config_only_fetches_the_configuration_without_weights(
    hub: tuple[Repository, str], tmp_path: Path
) -> None:
    repo, address = hub
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": address}
    args = ("install", "--backend", "diffusers", "--model", REPO_ID, "--config-only")
    installed = run_worker(*args, env=env)
    assert installed.returncode == 0, installed.stderr
    assert "single-file checkpoints of its family now load without a network" in installed.stdout
    snapshot = tmp_path / "hf" / "hub" / "models--studio-tests--tiny-sd" / "snapshots" / COMMIT
    assert (snapshot / "model_index.json").is_file()
    assert (snapshot / "tokenizer" / "vocab.json").is_file()
    assert list(snapshot.rglob("*.safetensors")) == []
    assert not any(request.endswith(".safetensors") for request in repo.requests)


def test_an_option_of_another_backends_install_is_a_usage_error() -> None:
    result = run_worker("install", "--backend", "coreml", "--config-only", env={})
    assert result.returncode == 2
    assert "--config-only is for --backend diffusers" in result.stderr


NO_NETWORK = """
import os, socket

_connect = socket.socket.connect


def _refused(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        with open(os.environ["NETWORK_ATTEMPTS"], "a") as log:
            log.write(f"{os.getpid()} {address}\\n")
        raise OSError("network blocked by the test")
    return _connect(self, address)


socket.socket.connect = _refused
"""
"""A `sitecustomize` for every Python process the worker starts: a TCP or IPv6
connection fails, and is written down."""


def test_a_single_file_checkpoint_loads_and_generates_with_no_network(
    tiny_model: Path, tmp_path: Path
) -> None:
    config_repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # SD 1.x's configuration
    hf_home = str(tmp_path / "hf")
    with serving(Repository(config_repo, tiny_model, commit=DEFAULT_REVISION)) as address:
        fetched = run_worker(
            "install",
            *("--backend", "diffusers", "--model", config_repo, "--config-only"),
            env={"HF_HOME": hf_home, "HF_ENDPOINT": address},
        )
    assert fetched.returncode == 0, fetched.stderr
    checkpoint = tmp_path / "downloaded-model.safetensors"
    subprocess.run(
        [sys.executable, "-m", "fixtures.ldm_checkpoint", str(tiny_model), str(checkpoint)],
        check=True,
        capture_output=True,
        env=worker_environment(),
        timeout=120,
    )
    blocker = tmp_path / "no-network"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_NETWORK)
    attempts = tmp_path / "network-attempts.log"
    attempts.touch()
    blocked = {
        "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO_ROOT)]),
        "NETWORK_ATTEMPTS": str(attempts),
    }
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
        capture_output=True,
        text=True,
        env=worker_environment(blocked),
        check=False,
    )
    assert "network blocked by the test" in probe.stderr  # the block is in force
    attempts.write_text("")

    setup = DiffusersSetup(tmp_path, checkpoint, HF_HOME=hf_home, **blocked)
    worker = start_worker_process(setup.env)
    try:
        models = worker.call("capabilities")["result"]["models"]
        listed = next(model for model in models if model["default"])
        assert (listed["family"], listed["usable"]) == ("sd1", True)
        response, _ = worker.exchange(
            "generate", {"prompt": "a red fox", "stepCount": 2, "seed": 3}, timeout=300
        )
    finally:
        worker.close()
    assert "result" in response, response
    result = response["result"]
    assert result["images"][0]["width"] == 64
    assert result["metadata"]["family"] == "sd1"
    assert result["modelId"] == "diffusers/downloaded-model:cpu"
    assert attempts.read_text() == ""  # nothing even tried the network
