"""`doctor` and `install`, run as a user runs them, against stand-ins: git and swift shims,
a local HTTP server on 127.0.0.1 serving the bundle zip, and a macOS platform answer."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixtures.resources import make_resource_dir
from fixtures.standin import StandInInstall, install_standin
from tests.worker_clients import worker_environment
from worker.backends.coreml.install import (
    MODEL_ARCHIVE_SHA256,
    MODEL_ARCHIVE_SIZE,
    MODEL_ARCHIVE_URL,
    MODEL_REVISION,
    SAMPLER_COMMIT,
)
from worker.backends.coreml.published import SDXL
from worker.backends.coreml.settings import BUNDLE_NAME

MACOS = "macos:14.5:arm64"

GIT_SHIM = """#!/bin/sh
echo "git $*" >> "$SHIM_LOG"
dir=.
if [ "$1" = -C ]; then dir=$2; shift 2; fi
case "$1" in
  clone)
    echo "Cloning into '$3'..."
    mkdir -p "$3/.git" && echo "// swift-tools-version:5.8" > "$3/Package.swift"
    echo 5a170d2eeac2ba6e8d2aa9a7c7a0f1e1d2c3b4a5 > "$3/.git/HEAD-commit" ;;
  rev-parse) cat "$dir/.git/HEAD-commit" ;;
  status) cat "$dir/.git/changes" 2>/dev/null || true ;;
  checkout) echo "$4" > "$dir/.git/HEAD-commit" ;;
esac
"""
SWIFT_SHIM = """#!/bin/sh
echo "swift $*" >> "$SHIM_LOG"
echo "Building for production..."
if [ -n "$SHIM_SWIFT_FAIL" ]; then
  echo "Compiling StableDiffusion Pipeline.swift"
  echo "error: no such module 'CoreML'"
  exit 1
fi
mkdir -p .build/release
cp "$SHIM_SAMPLER" .build/release/StableDiffusionSample
chmod +x .build/release/StableDiffusionSample
echo "Build complete!"
"""


@dataclass
class BundleServer:
    """Serves one zip with Range support; `mode` makes it fail in chosen ways."""

    data: bytes
    mode: str = "ok"  # ok | drop-once | error
    requests: list[str | None] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{BUNDLE_NAME}.zip"


def _handler(server_state: BundleServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state = server_state
            requested = self.headers.get("Range")
            state.requests.append(requested)
            if state.mode == "error":
                self.send_error(500, "Internal Server Error")
                return
            start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
            body = state.data[start:]
            if start >= len(state.data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206 if requested else 200)
            if requested:
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(state.data) - 1}/{len(state.data)}"
                )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.mode == "drop-once" and len(state.requests) == 1:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


def _bundle_zip(root: Path, complete: bool = True) -> bytes:
    source = make_resource_dir(
        root / "bundle-source" / BUNDLE_NAME, omit=() if complete else ["Unet.mlmodelc"]
    )
    archive = root / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(source.parent.rglob("*")):
            bundle.write(path, path.relative_to(source.parent).as_posix())
    return archive.read_bytes()


@pytest.fixture
def bundle_server(tmp_path: Path) -> Iterator[BundleServer]:
    state = BundleServer(_bundle_zip(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@dataclass
class Machine:
    home: Path
    log: Path
    git: Path
    swift: Path
    standin: StandInInstall

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    @property
    def resource_path(self) -> Path:
        return self.home / ".systemsculpt/local-image-models" / BUNDLE_NAME / BUNDLE_NAME

    @property
    def models_dir(self) -> Path:
        return self.home / ".systemsculpt/local-image-models"

    @property
    def binary(self) -> Path:
        return self.home / "gits/apps/ml-stable-diffusion/.build/release/StableDiffusionSample"


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    home = tmp_path / "home"
    home.mkdir()
    shims = tmp_path / "shims"
    shims.mkdir()
    git, swift = shims / "git", shims / "swift"
    git.write_text(GIT_SHIM)
    swift.write_text(SWIFT_SHIM)
    git.chmod(0o755)
    swift.chmod(0o755)
    return Machine(home, tmp_path / "shim.log", git, swift, install_standin(tmp_path / "standin"))


def _worker(
    machine: Machine, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=worker_environment(
            {
                "HOME": str(machine.home),
                "SHIM_LOG": str(machine.log),
                "SHIM_SAMPLER": str(machine.standin.sampler),
                "SYSTEMSCULPT_LOCAL_INSTALL_RETRY_DELAY_SECONDS": "0.05",
                **(env or {}),
            }
        ),
    )


def _install(
    machine: Machine,
    server: BundleServer,
    *extra: str,
    env: dict[str, str] | None = None,
    pinned: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`install` on a fake Mac with the shims, downloading from `server`."""
    pins = ["--model-size", str(len(server.data))]
    pins += ["--model-sha256", hashlib.sha256(server.data).hexdigest()]
    return _worker(
        machine,
        "install",
        *["--platform", MACOS, "--git", str(machine.git), "--swift", str(machine.swift)],
        *["--model-url", server.url, *(pins if pinned else [])],
        *extra,
        env=env,
    )


def _leftovers(machine: Machine) -> list[str]:
    if not machine.models_dir.exists():
        return []
    return sorted(p.name for p in machine.models_dir.iterdir() if p.name != BUNDLE_NAME)


def test_install_from_nothing_then_again_changes_nothing(
    machine: Machine, bundle_server: BundleServer
) -> None:
    first = _install(machine, bundle_server)
    assert first.returncode == 0, first.stderr
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in first.stderr
    assert "Cloning into" in first.stderr and "Build complete!" in first.stderr
    assert "ready: the local provider can generate images" in first.stderr
    assert "downloading 100.0%" in first.stderr
    checkout = machine.home / "gits/apps/ml-stable-diffusion"
    assert machine.calls() == [
        f"git clone https://github.com/apple/ml-stable-diffusion {checkout}",
        f"git -C {checkout} checkout --quiet --detach {SAMPLER_COMMIT}",
        "swift build -c release --product StableDiffusionSample",
    ]
    assert (machine.resource_path / "Unet.mlmodelc").is_dir()
    assert machine.binary.is_file()
    assert _leftovers(machine) == [], "the zip, a .part or a staging directory was left"
    assert "export " not in first.stderr  # default locations need no variables

    calls, downloads = machine.calls(), list(bundle_server.requests)
    second = _install(machine, bundle_server)
    assert second.returncode == 0, second.stderr
    assert "already cloned: reusing it" in second.stderr
    assert "already built" in second.stderr
    assert "already in place" in second.stderr
    assert machine.calls()[len(calls) :] == [f"git -C {checkout} rev-parse HEAD"]
    assert bundle_server.requests == downloads


def test_a_dropped_connection_is_resumed_with_a_range_request(
    machine: Machine, bundle_server: BundleServer
) -> None:
    bundle_server.mode = "drop-once"
    result = _install(machine, bundle_server)
    assert result.returncode == 0, result.stderr
    assert bundle_server.requests[0] is None
    assert bundle_server.requests[1] == f"bytes={len(bundle_server.data) // 2}-"
    assert "resuming" in result.stderr
    assert (machine.resource_path / "vocab.json").is_file()


def test_a_partial_download_from_an_earlier_run_is_continued(
    machine: Machine, bundle_server: BundleServer
) -> None:
    machine.models_dir.mkdir(parents=True)
    half = len(bundle_server.data) // 3
    (machine.models_dir / f"{BUNDLE_NAME}.zip.part").write_bytes(bundle_server.data[:half])
    result = _install(machine, bundle_server)
    assert result.returncode == 0, result.stderr
    assert bundle_server.requests == [f"bytes={half}-"]


def test_a_wrong_checksum_deletes_the_download_and_installs_nothing(
    machine: Machine, bundle_server: BundleServer
) -> None:
    result = _install(machine, bundle_server, "--model-sha256", "0" * 64)
    assert result.returncode == 2
    actual = hashlib.sha256(bundle_server.data).hexdigest()
    assert f"with SHA-256 {actual}; the pins are" in result.stderr
    assert f"and SHA-256 {'0' * 64}. It was deleted" in result.stderr
    assert f"--model-sha256 {actual}" in result.stderr
    assert not machine.resource_path.parent.exists()
    assert _leftovers(machine) == []


def test_a_server_error_fails_with_the_status_after_retrying(
    machine: Machine, bundle_server: BundleServer
) -> None:
    bundle_server.mode = "error"
    result = _install(machine, bundle_server)
    assert result.returncode == 2
    assert "HTTP 500" in result.stderr and "kept failing" in result.stderr
    assert len(bundle_server.requests) == 5
    assert not machine.resource_path.parent.exists()


def test_an_archive_without_a_usable_bundle_is_never_moved_into_place(
    machine: Machine, bundle_server: BundleServer, tmp_path: Path
) -> None:
    bundle_server.data = _bundle_zip(tmp_path / "broken", complete=False)
    result = _install(machine, bundle_server)
    assert result.returncode == 2
    assert "does not hold a usable bundle" in result.stderr and "Unet.mlmodelc" in result.stderr
    assert not machine.resource_path.parent.exists()
    assert _leftovers(machine) == []


def test_a_failed_build_shows_the_tail_of_its_output(
    machine: Machine, bundle_server: BundleServer
) -> None:
    result = _install(machine, bundle_server, env={"SHIM_SWIFT_FAIL": "1"})
    assert result.returncode == 2
    assert "swift build failed with exit code 1" in result.stderr
    assert "error: no such module 'CoreML'" in result.stderr.split("its last lines:")[1]
    assert bundle_server.requests == []


def test_the_bundle_is_pinned_to_a_revision_size_and_checksum() -> None:
    assert f"/resolve/{MODEL_REVISION}/" in MODEL_ARCHIVE_URL and "/main/" not in MODEL_ARCHIVE_URL
    assert MODEL_ARCHIVE_URL.endswith(f"{BUNDLE_NAME}.zip")
    assert (MODEL_ARCHIVE_SIZE, MODEL_ARCHIVE_SHA256) == (
        1_141_379_936,
        "90c532943d460c559a8d84b7a0f05a4d265fee78ca355fdd5aa734fd43e08972",
    )


def test_the_sdxl_bundle_and_the_sampler_are_pinned() -> None:
    assert (SDXL.size, SDXL.sha256) == (
        6_711_666_087,
        "a00f335d990588c97c347d97f7e92080f8cb23342c454f4a4d853a59bea1e2b5",
    )
    assert SDXL.url == (
        "https://huggingface.co/apple/coreml-stable-diffusion-mixed-bit-palettization/"
        "resolve/main/coreml-stable-diffusion-mixed-bit-palettization_original_compiled.zip"
    )
    assert SAMPLER_COMMIT == "e12202c1f6405b83918b58a5d097cd61e3e1f702"  # has --sd3


def _sdxl_zip(root: Path) -> bytes:
    """Apple's SDXL zip layout: `<name>/compiled/<the bundle's files>`."""
    top = root / "sdxl-source" / SDXL.folder
    make_resource_dir(top / "compiled", size=(1024, 1024), family="sdxl", attention="original")
    archive = root / "sdxl.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(top.rglob("*")):
            bundle.write(path, path.relative_to(top.parent).as_posix())
    return archive.read_bytes()


def test_install_bundle_sdxl_finds_the_bundle_in_its_zip_and_names_the_model(
    machine: Machine, bundle_server: BundleServer, tmp_path: Path
) -> None:
    bundle_server.data = _sdxl_zip(tmp_path)
    result = _install(machine, bundle_server, "--bundle", "sdxl")
    assert result.returncode in (0, 1), result.stderr  # 1: the SD 2.1 default is not there
    bundle = machine.models_dir / SDXL.folder / SDXL.folder / "compiled"  # unzipped as SD 2.1
    assert (bundle / "TextEncoder2.mlmodelc").is_dir()
    assert sorted(p.name for p in machine.models_dir.iterdir()) == [SDXL.folder]
    model = f"coreml_diffusion/{SDXL.folder}"
    assert f'ask for it with "model": "{model}"' in result.stderr
    assert "Stable Diffusion XL base" in result.stderr

    listed = _worker(
        machine,
        "doctor",
        "--platform",
        MACOS,
        "--json",
        env={"SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(machine.binary)},
    )
    report = json.loads(listed.stdout)
    models = {check["detail"] for check in report["checks"] if check["name"] == "listed model"}
    assert any(model in detail and "Stable Diffusion XL" in detail for detail in models)

    again = _install(machine, bundle_server, "--bundle", "sdxl")
    assert "already in place" in again.stderr and len(bundle_server.requests) == 1


def test_a_clone_at_another_commit_is_moved_to_the_pinned_one_and_rebuilt(
    machine: Machine, bundle_server: BundleServer
) -> None:
    assert _install(machine, bundle_server).returncode == 0
    checkout = machine.home / "gits/apps/ml-stable-diffusion"
    (checkout / ".git" / "HEAD-commit").write_text("5a170d2" + "0" * 33 + "\n")  # tag 1.1.1
    before = len(machine.calls())
    moved = _install(machine, bundle_server)
    assert moved.returncode == 0, moved.stderr
    assert f"cloned at 5a170d200000: moving it to {SAMPLER_COMMIT[:12]}" in moved.stderr
    assert [call.split()[:4] for call in machine.calls()[before:]] == [
        ["git", "-C", str(checkout), "rev-parse"],
        ["git", "-C", str(checkout), "status"],
        ["git", "-C", str(checkout), "fetch"],
        ["git", "-C", str(checkout), "checkout"],
        ["swift", "build", "-c", "release"],
    ]


def test_a_clone_with_local_changes_is_left_alone(
    machine: Machine, bundle_server: BundleServer
) -> None:
    assert _install(machine, bundle_server).returncode == 0
    checkout = machine.home / "gits/apps/ml-stable-diffusion"
    (checkout / ".git" / "HEAD-commit").write_text("1" * 40 + "\n")
    (checkout / ".git" / "changes").write_text(" M swift/StableDiffusionCLI/main.swift\n")
    refused = _install(machine, bundle_server)
    assert refused.returncode == 2
    assert "has local changes; commit or stash them" in refused.stderr
    assert f"--sampler-commit {'1' * 40}" in refused.stderr
    kept = _install(machine, bundle_server, "--sampler-commit", "1" * 40)
    assert kept.returncode == 0 and "already cloned: reusing it" in kept.stderr


def test_a_file_of_another_size_than_the_pin_is_refused_before_it_is_downloaded(
    machine: Machine, bundle_server: BundleServer
) -> None:
    result = _install(machine, bundle_server, pinned=False)
    assert result.returncode == 2, result.stderr
    offered = len(bundle_server.data)
    assert f"the server offers {offered} bytes, the pinned size is 1141379936" in result.stderr
    assert f"--model-size {offered} --model-sha256" in result.stderr
    assert "SYSTEMSCULPT_LOCAL_INSTALL_MODEL_SIZE" in result.stderr
    assert bundle_server.requests == [None]
    assert _leftovers(machine) == []


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("MODEL_SIZE", "abc", "is not a whole number"),
        ("MODEL_SHA256", "xyz", "is not 64 hexadecimal digits"),
        ("GIT", "git 'unclosed", "is not a command line"),
        ("RETRY_DELAY_SECONDS", "soon", "is not a number"),
    ],
)
@pytest.mark.parametrize("verify", [True, False])
def test_unusable_install_variables_are_named_without_a_traceback(
    machine: Machine,
    bundle_server: BundleServer,
    variable: str,
    value: str,
    reason: str,
    verify: bool,
) -> None:
    name = f"SYSTEMSCULPT_LOCAL_INSTALL_{variable}"
    extra = ["--verify"] if verify else []
    result = _install(machine, bundle_server, *extra, env={name: value})
    assert result.returncode == 2
    assert f"install: {name}={value!r} {reason}" in result.stderr
    assert "Traceback" not in result.stderr
    assert machine.calls() == [] and bundle_server.requests == []


def test_off_a_mac_install_changes_nothing(machine: Machine, bundle_server: BundleServer) -> None:
    result = _worker(machine, "install", "--git", str(machine.git), "--swift", str(machine.swift))
    assert result.returncode == 2
    assert "needs macOS 13.1 or later. Nothing was changed." in result.stderr
    assert list(machine.home.iterdir()) == [] and machine.calls() == []


def test_verify_only_checks(machine: Machine, bundle_server: BundleServer) -> None:
    before = _worker(machine, "install", "--verify", "--platform", MACOS)
    assert before.returncode == 1
    assert "not ready" in before.stderr and machine.calls() == []
    assert list(machine.home.iterdir()) == []
    assert _install(machine, bundle_server).returncode == 0
    after = _worker(machine, "install", "--verify", "--platform", MACOS)
    assert after.returncode == 0, after.stderr


def test_chosen_locations_are_followed_by_the_variables_to_set(
    machine: Machine, bundle_server: BundleServer, tmp_path: Path
) -> None:
    prefix, models = tmp_path / "opt" / "sd", tmp_path / "models"
    result = _install(machine, bundle_server, "--prefix", str(prefix), "--models-dir", str(models))
    assert result.returncode == 0, result.stderr
    binary = prefix / ".build/release/StableDiffusionSample"
    assert f"export SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN={binary}" in result.stderr
    assert (
        f"export SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH={models / BUNDLE_NAME / BUNDLE_NAME}"
        in result.stderr
    )


def test_doctor_text_and_exit_code(machine: Machine) -> None:
    result = _worker(machine, "doctor", "--platform", MACOS)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[ ok ] platform") and "Darwin 14.5 on arm64" in lines[0]
    assert any(line.startswith("[FAIL] sampler") for line in lines)
    assert any("fix: studio-imagegen-worker install" in line for line in lines)
    assert lines[-1] == "not ready: sampler, resources failed"


def test_doctor_json_and_an_intel_mac_warning(machine: Machine, tmp_path: Path) -> None:
    env = machine.standin.env()
    result = _worker(machine, "doctor", "--json", "--platform", "macos:14.5:x86_64", env=env)
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ready"] is True
    statuses = {
        check["name"]: check["status"]
        for check in report["checks"]
        if check["name"] != "listed model"
    }
    assert statuses == {
        "platform": "warn",
        "sampler": "ok",
        "sampler runs": "ok",
        "resources": "ok",
        "image-to-image": "ok",
        "aspect ratios": "ok",
        "free disk": "ok",
        "settings": "ok",
    }
    models = [check for check in report["checks"] if check["name"] == "listed model"]
    assert models[0]["status"] == "ok"
    assert models[0]["detail"].startswith("coreml_diffusion/resources: Stable Diffusion 2.x")
    assert "the default; ready" in models[0]["detail"]
    diffusers = [check for check in models if check["detail"].startswith("diffusers/")]
    assert diffusers and diffusers[0]["status"] == "warn"  # not installed: not ready's cause
    assert "install --backend diffusers" in diffusers[0]["fix"]


def test_doctor_reports_image_to_image_and_the_manifests_bundles(
    machine: Machine, tmp_path: Path
) -> None:
    from worker.backends.coreml.bundles import MANIFEST_SCHEMA

    no_encoder = make_resource_dir(tmp_path / "square", omit=["VAEEncoder.mlmodelc"])
    manifest = tmp_path / "manifest.json"
    ratios = {
        "16:9": {"width": 1024, "height": 576, "resourcePath": str(tmp_path / "absent")},
        "4:3": {"width": 768, "height": 576, "resourcePath": str(no_encoder)},
    }
    manifest.write_text(json.dumps({"schema": MANIFEST_SCHEMA, "ratios": ratios}))
    env = {
        **machine.standin.env(),
        "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(no_encoder),
        "SYSTEMSCULPT_LOCAL_DIFFUSION_MODEL_MANIFEST": str(manifest),
    }
    result = _worker(machine, "doctor", "--platform", MACOS, env=env)
    lines = result.stdout.splitlines()
    encoder = next(line for line in lines if "image-to-image" in line)
    assert encoder.startswith("[warn]") and "VAEEncoder.mlmodelc" in encoder
    ratios_line = next(line for line in lines if "aspect ratios" in line)
    assert ratios_line.startswith("[FAIL]")
    assert "makes 512x512 images, not the 768x576 its entry says" in ratios_line
    assert result.returncode == 1


def test_doctor_lists_what_each_model_edits_with(machine: Machine, tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_resource_dir(
        models / "controlled", family="sd1", controlnets=("Canny", "InPaint"), controlled_unet=True
    )
    env = {**machine.standin.env(), "SYSTEMSCULPT_LOCAL_DIFFUSION_MODELS_DIR": str(models)}
    result = _worker(machine, "doctor", "--platform", MACOS, env=env)
    line = next(line for line in result.stdout.splitlines() if "/controlled:" in line)
    assert line.startswith("[ ok ]")
    assert line.endswith("ready; inpaints (controlnet); ControlNets: Canny, InPaint")
    default = next(line for line in result.stdout.splitlines() if "the default; ready" in line)
    assert "ControlNets" not in default and "inpaints" not in default


def test_doctor_catches_a_sampler_that_does_not_start_and_bad_settings(
    machine: Machine, tmp_path: Path
) -> None:
    broken = tmp_path / "StableDiffusionSample"
    broken.write_text("#!/bin/sh\necho 'dyld: Library not loaded: CoreML' >&2\nexit 134\n")
    broken.chmod(0o755)
    env = {
        "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(broken),
        "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(make_resource_dir(tmp_path / "res")),
        "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "lots",
    }
    result = _worker(machine, "doctor", "--json", env=env)
    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["sampler runs"]["status"] == "fail"
    assert (
        "exited with code 134: dyld: Library not loaded: CoreML" in checks["sampler runs"]["detail"]
    )
    assert checks["settings"]["status"] == "fail"
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT='lots'" in checks["settings"]["detail"]
