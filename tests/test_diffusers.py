"""The diffusers backend, sampling for real with a tiny random-weight model, over the
worker's real stdio the way Studio drives it (and once in-process).

One warm worker serves most tests of this module, as Studio keeps one: each test asks
for what it needs and leaves the worker serving. The model's native side is 64 pixels.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.diffusers_setup import DiffusersSetup, build_tiny_model, maps_of, require_extra
from tests.worker_clients import (
    LINUX,
    REPO_ROOT,
    WorkerProcess,
    in_process_worker,
    request,
    start_worker_process,
)
from worker.backends.diffusers.host_process import trim_file
from worker.backends.registry import read_settings

pytestmark = pytest.mark.diffusers
REFERENCE = REPO_ROOT / "fixtures" / "reference-photo.jpg"
LONG_WAIT = 120.0
"""A cold host imports torch and loads the model: seconds, more on a busy machine."""
Message = dict[str, Any]


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersSetup:
    return DiffusersSetup(tmp_path_factory.mktemp("diffusers"), tiny_model)


@pytest.fixture(scope="module")
def warm(setup: DiffusersSetup) -> Iterator[WorkerProcess]:
    """One worker for the module, its model host loaded by a first job."""
    worker = start_worker_process(setup.env)
    try:
        response, _ = generate(worker, {"prompt": "warm up"})
        assert "result" in response, response
        yield worker
    finally:
        worker.close()
    deadline = time.monotonic() + 10
    while setup.host_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert setup.host_processes() == [], "a model host outlived its worker"
    assert setup.leftover_temp_entries() == [], "a job or host left its temp dir behind"


def generate(
    worker: WorkerProcess, params: dict[str, Any], id_: Any = "g"
) -> tuple[Message, list[Message]]:
    return worker.exchange("generate", params, id_, timeout=LONG_WAIT)


def pixels(image: dict[str, Any]) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(base64.b64decode(image["base64"]))) as opened:
        return opened.size, opened.convert("RGB").tobytes()


def steps_of(notifications: list[Message]) -> list[tuple[int, int]]:
    return [
        (n["params"]["step"], n["params"]["totalSteps"])
        for n in notifications
        if n["method"] == "progress" and n["params"]["phase"] == "sampling" and n["params"]["step"]
    ]


def host_of(worker: WorkerProcess) -> dict[str, Any]:
    status: dict[str, Any] = worker.call("capabilities")["result"]["backend"]["modelHost"]
    return status


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_until_step(
    worker: WorkerProcess, params: dict[str, Any], step: int, id_: str
) -> list[Message]:
    """Send a generate and read until it reports `step` steps done."""
    worker.send(request("generate", params, id_))
    seen = []
    while True:
        message = worker.receive(LONG_WAIT)
        assert "method" in message, f"answered before step {step}: {message}"
        seen.append(message)
        if message["method"] == "progress" and message["params"]["step"] >= step:
            return seen


def answer_to(worker: WorkerProcess, id_: str) -> tuple[Message, list[Message]]:
    """Messages until the response to `id_` (other responses and notifications kept)."""
    others = []
    while (message := worker.receive(LONG_WAIT)).get("id") != id_ or "method" in message:
        others.append(message)
    return message, others


# --- what it makes -------------------------------------------------------------------


def test_progress_counts_every_step_the_scheduler_runs(warm: WorkerProcess) -> None:
    response, notifications = generate(
        warm, {"prompt": "a lighthouse", "seed": 7, "count": 2, "stepCount": 4}
    )
    result = response["result"]
    # PNDM runs one step more than asked; the two images are sampled in one pass.
    assert steps_of(notifications) == [(step, 5) for step in range(1, 6)]
    assert result["metadata"]["backend"] == "diffusers"
    assert result["modelId"] == "diffusers/tiny-sd:cpu"
    assert [image["seed"] for image in result["images"]] == [7, 8]
    assert [pixels(image)[0] for image in result["images"]] == [(64, 64), (64, 64)]
    phases = [n["params"]["phase"] for n in notifications if n["method"] == "progress"]
    assert phases[-2:] == ["saving", "saving"]


@pytest.mark.parametrize(
    ("scheduler", "steps"), [("pndm", 4), ("dpmpp", 3), ("euler", 3), ("euler_a", 3), ("ddim", 3)]
)
def test_every_advertised_scheduler_samples(
    warm: WorkerProcess, scheduler: str, steps: int
) -> None:
    assert scheduler in warm.call("capabilities")["result"]["features"]["schedulers"]
    response, notifications = generate(
        warm, {"prompt": "a hill", "seed": 1, "stepCount": 3, "scheduler": scheduler}
    )
    assert response["result"]["metadata"]["scheduler"] == scheduler
    assert steps_of(notifications)[-1] == (steps, steps)


def test_same_seed_same_bytes_other_seed_other_image(warm: WorkerProcess) -> None:
    params = {"prompt": "a red door", "seed": 42, "stepCount": 3}
    first = generate(warm, params)[0]["result"]["images"][0]
    again = generate(warm, params)[0]["result"]["images"][0]
    other = generate(warm, {**params, "seed": 43})[0]["result"]["images"][0]
    assert first["base64"] == again["base64"]
    assert pixels(first)[1] != pixels(other)[1]


@pytest.mark.parametrize(("ratio", "size"), [("16:9", (88, 48)), ("3:4", (56, 72))])
def test_aspect_ratios_at_the_model_native_area(
    warm: WorkerProcess, ratio: str, size: tuple[int, int]
) -> None:
    capabilities = warm.call("capabilities")["result"]["features"]
    assert ratio in capabilities["aspectRatios"]
    response, _ = generate(warm, {"prompt": "a wide field", "aspectRatio": ratio, "stepCount": 3})
    result = response["result"]
    assert pixels(result["images"][0])[0] == size
    assert (result["metadata"]["width"], result["metadata"]["height"]) == size


def test_a_size_far_from_the_native_one_is_said_up_front_and_in_the_result(
    warm: WorkerProcess,
) -> None:
    response, notes = generate(warm, {"prompt": "big", "width": 128, "height": 128, "stepCount": 2})
    (warning,) = response["result"]["warnings"]
    assert "128x128 has 4 times the pixels of this model's native 64x64" in warning
    progress = [n["params"] for n in notes if n["method"] == "progress"]
    first_at_work = next(p for p in progress if p["phase"] != "queued")
    assert first_at_work["message"] == warning, "said before the work starts"
    near, _ = generate(warm, {"prompt": "near", "width": 96, "height": 64, "stepCount": 2})
    assert near["result"]["warnings"] == []


def test_any_size_on_the_grid_within_the_limits(warm: WorkerProcess) -> None:
    caps = warm.call("capabilities")["result"]
    assert caps["features"]["customSizes"] is True
    assert caps["limits"]["width"] == {"min": 64, "max": 2048, "default": 64}
    response, _ = generate(warm, {"prompt": "a banner", "width": 120, "height": 64, "stepCount": 2})
    result = response["result"]
    assert pixels(result["images"][0])[0] == (120, 64)
    assert result["metadata"]["requestedAspectRatio"] == "15:8"


def test_image_to_image_starts_from_the_reference(warm: WorkerProcess) -> None:
    reference = {
        "mimeType": "image/jpeg",
        "base64": base64.b64encode(REFERENCE.read_bytes()).decode(),
    }
    params = {"prompt": "a photo", "seed": 5, "stepCount": 4}
    plain = generate(warm, params)[0]["result"]
    response, notifications = generate(
        warm, {**params, "inputImages": [reference], "strength": 0.5}
    )
    result = response["result"]
    assert result["metadata"]["usedReferenceImage"] is True
    assert result["metadata"]["strength"] == 0.5
    # int(4 * 0.5) = 2 of PNDM's 5 timesteps are skipped.
    assert steps_of(notifications)[-1] == (3, 3)
    assert pixels(result["images"][0])[0] == (64, 64)
    assert pixels(result["images"][0])[1] != pixels(plain["images"][0])[1]


def test_a_strength_that_runs_no_step_is_refused(warm: WorkerProcess) -> None:
    reference = {
        "mimeType": "image/jpeg",
        "base64": base64.b64encode(REFERENCE.read_bytes()).decode(),
    }
    response, _ = generate(
        warm, {"prompt": "a photo", "stepCount": 4, "inputImages": [reference], "strength": 0.2}
    )
    assert response["error"]["code"] == -32602
    assert "at least 0.25" in response["error"]["message"]


def test_previews_come_as_the_pipeline_samples(warm: WorkerProcess) -> None:
    response, notifications = generate(
        warm, {"prompt": "a tree", "seed": 3, "stepCount": 4, "count": 2, "previewEvery": 2}
    )
    assert "result" in response
    previews = [n["params"] for n in notifications if n["method"] == "preview"]
    # Both images sample together, 5 PNDM steps; a preview of each after the 2nd and the
    # 4th: none after the first (noise still) nor the last (the final image follows).
    assert [(p["index"], p["step"]) for p in previews] == [(0, 2), (1, 2), (0, 4), (1, 4)]
    for preview in previews:
        with Image.open(io.BytesIO(base64.b64decode(preview["base64"]))) as image:
            assert image.size == (preview["width"], preview["height"]) == (64, 64)


BATCH_TOLERANCE = 2
"""How far (in levels of 255, per channel) image i of a batch may be from the image made
alone with seed + i: the generators are the same, but a batched kernel may add up in
another order and round differently (0 or 1 seen here)."""


def test_a_batch_makes_each_image_as_it_is_made_alone(warm: WorkerProcess) -> None:
    params = {"prompt": "a kite", "stepCount": 4, "scheduler": "euler_a"}  # noise each step
    batch, notes = generate(warm, {**params, "seed": 20, "count": 3})
    assert steps_of(notes)[-1] == (4, 4)  # one pass for the three
    for index, image in enumerate(batch["result"]["images"]):
        assert image["seed"] == 20 + index
        alone, _ = generate(warm, {**params, "seed": 20 + index})
        size, made = pixels(image)
        alone_size, expected = pixels(alone["result"]["images"][0])
        assert size == alone_size
        worst = max(abs(a - b) for a, b in zip(made, expected, strict=True))
        assert worst <= BATCH_TOLERANCE, (index, worst)
    assert len({pixels(image)[1] for image in batch["result"]["images"]}) == 3


def test_latent_previews_are_the_default_and_leave_the_image_as_it_was(
    warm: WorkerProcess,
) -> None:
    models = warm.call("capabilities")["result"]["models"]
    (tiny,) = [m for m in models if m["id"] == "diffusers/tiny-sd"]
    assert tiny["previewDecoders"] == ["latent", "vae"]
    params = {"prompt": "a tree", "seed": 3, "stepCount": 6}
    plain, _ = generate(warm, params)
    latent, latent_notes = generate(warm, {**params, "previewEvery": 1})
    full, full_notes = generate(warm, {**params, "previewEvery": 1, "previewDecoder": "vae"})
    made = {pixels(answer["result"]["images"][0]) for answer in (plain, latent, full)}
    assert len(made) == 1  # previews of either kind only look: the image is the same
    by_latents = [n["params"] for n in latent_notes if n["method"] == "preview"]
    decoded = [n["params"] for n in full_notes if n["method"] == "preview"]
    # 7 PNDM timesteps: a preview after each but the first and the last.
    assert [p["step"] for p in by_latents] == [p["step"] for p in decoded] == [2, 3, 4, 5, 6]
    for quick, slow in zip(by_latents, decoded, strict=True):
        assert (quick["width"], quick["height"]) == (slow["width"], slow["height"]) == (64, 64)
        assert quick["base64"] != slow["base64"]  # made another way: from the latents


def test_images_written_to_a_directory_carry_their_own_seed(
    warm: WorkerProcess, tmp_path: Path
) -> None:
    response, _ = generate(
        warm,
        {
            "prompt": "a kite",
            "seed": 9,
            "count": 2,
            "stepCount": 3,
            "output": "path",
            "outputDir": str(tmp_path),
        },
    )
    images = response["result"]["images"]
    assert [image["fileName"] for image in images] == [
        "a_kite.0.9.final.png",
        "a_kite.1.10.final.png",
    ]
    with Image.open(images[1]["path"]) as written:
        assert "Seed: 10," in written.info["parameters"]


# --- stopping, failing, recovering ---------------------------------------------------


def test_a_name_too_long_for_the_folder_is_refused_before_running(
    warm: WorkerProcess, tmp_path: Path
) -> None:
    """As Core ML refuses it: -32602 on the prompt before any step, not -32008 after all
    of them. Inline (base64) nothing is named on disk, and the same prompt runs."""
    prompt = "\U0001f98a" * 70
    params = {"prompt": prompt, "stepCount": 2, "output": "path", "outputDir": str(tmp_path)}
    response, notes = generate(warm, params)
    error = response["error"]
    assert error["code"] == -32602 and error["data"]["errors"][0]["field"] == "prompt"
    assert "over the file system's limit of 255" in error["message"]
    assert steps_of(notes) == [] and list(tmp_path.iterdir()) == []
    inline, _ = generate(warm, {"prompt": prompt, "stepCount": 2})
    assert "result" in inline, inline


def test_a_hostile_prompt_reaches_no_name_or_message(warm: WorkerProcess, tmp_path: Path) -> None:
    prompt = "a \x1b]0;owned\x07fox \u202egnp.exe"
    params = {"prompt": prompt, "stepCount": 2, "output": "path", "outputDir": str(tmp_path)}
    response, notes = generate(warm, params)
    (image,) = response["result"]["images"]
    assert image["fileName"].startswith("a__]0;owned_fox__gnp.exe.")
    assert [entry.name for entry in tmp_path.iterdir()] == [image["fileName"]]
    assert not any("\x1b" in n["params"].get("message", "") for n in notes)


def test_cancel_stops_at_a_step_boundary_and_keeps_the_host(warm: WorkerProcess) -> None:
    host = host_of(warm)
    seen = run_until_step(warm, {"prompt": "a long one", "stepCount": 80}, 2, "long")
    warm.send(request("cancel", {"requestId": "long"}, "c"))
    response, others = answer_to(warm, "long")
    assert response["error"]["code"] == -32800
    steps = [m["params"]["step"] for m in seen + others if m.get("method") == "progress"]
    assert max(steps) < 81
    assert host_of(warm)["pid"] == host["pid"], "the host stopped in time; it was not killed"
    after, _ = generate(warm, {"prompt": "after a cancel", "stepCount": 3})
    assert "result" in after


def test_timeout_stops_the_job_and_the_next_one_runs(warm: WorkerProcess) -> None:
    host = host_of(warm)
    response, _ = generate(
        warm, {"prompt": "too slow", "stepCount": 80, "count": 8, "timeoutMs": 1000}
    )
    assert response["error"]["code"] == -32004
    assert "1000 ms" in response["error"]["message"]
    assert host_of(warm)["pid"] == host["pid"]
    assert "result" in generate(warm, {"prompt": "in time", "stepCount": 3})[0]


def test_a_timeout_shorter_than_the_cold_load_counts_only_the_job(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The first job of a worker also waits for the host to import torch and load the
    model (seconds); its 1 s timeout covers the job it asked for, not that load."""
    setup = DiffusersSetup(tmp_path, tiny_model)
    worker = start_worker_process(setup.env)
    try:
        response, notes = generate(worker, {"prompt": "cold", "stepCount": 3, "timeoutMs": 1000})
        assert "result" in response, response
        loading = [
            n["params"]["message"]
            for n in notes
            if n["method"] == "progress" and n["params"]["phase"] == "loading"
        ]
        assert any("a load may take up to 15 min" in message for message in loading), loading
        assert host_of(worker)["loaded"] is True
    finally:
        worker.close()
    assert wait_for(lambda: setup.host_processes() == [])
    assert setup.leftover_temp_entries() == []


def test_a_load_over_its_own_limit_is_stopped_and_says_which_limit(
    tiny_model: Path, tmp_path: Path
) -> None:
    setup = DiffusersSetup(
        tmp_path, tiny_model, SYSTEMSCULPT_LOCAL_DIFFUSERS_LOAD_TIMEOUT_MS="1000"
    )
    worker = start_worker_process(setup.env)
    try:
        response, _ = generate(worker, {"prompt": "never loads in time", "stepCount": 3})
        error = response["error"]
        assert error["code"] == -32004 and error["data"] == {"timeoutMs": 1000}
        assert "did not load" in error["message"] and "within 1 s" in error["message"]
        assert "SYSTEMSCULPT_LOCAL_DIFFUSERS_LOAD_TIMEOUT_MS" in error["message"]
        assert wait_for(lambda: setup.host_processes() == []), "the half-loaded host lives on"
        assert host_of(worker)["loaded"] is False
    finally:
        worker.close()
    assert setup.leftover_temp_entries() == []


def test_a_killed_host_fails_its_job_and_the_next_gets_a_new_one(
    warm: WorkerProcess, setup: DiffusersSetup
) -> None:
    old = host_of(warm)["pid"]
    run_until_step(warm, {"prompt": "doomed", "stepCount": 80}, 1, "doomed")
    os.kill(old, signal.SIGKILL)
    response, _ = answer_to(warm, "doomed")
    assert response["error"]["code"] == -32003
    assert "SIGKILL" in response["error"]["message"]
    assert response["error"]["data"]["signal"] == "SIGKILL"
    assert wait_for(lambda: old not in setup.host_processes())
    after, notifications = generate(warm, {"prompt": "reborn", "stepCount": 3})
    assert "result" in after
    loading = [n["params"]["message"] for n in notifications if n["params"]["phase"] == "loading"]
    assert any("its last load took" in message for message in loading)
    new = host_of(warm)
    assert new["loaded"] and new["pid"] != old
    assert setup.host_processes() == [new["pid"]]


def test_metadata_says_the_device_and_dtype_it_ran_on_not_compute_units(
    warm: WorkerProcess,
) -> None:
    response, _ = generate(warm, {"prompt": "fox", "stepCount": 2, "computeUnits": "cpuOnly"})
    result = response["result"]
    metadata = result["metadata"]
    assert (metadata["computeUnits"], metadata["device"], metadata["dtype"]) == (
        None,
        "cpu",
        "float32",
    )
    assert "computeUnits" not in metadata["sources"]
    assert any("computeUnits is Core ML's setting" in w for w in result["warnings"])
    with Image.open(io.BytesIO(base64.b64decode(result["images"][0]["base64"]))) as png:
        text = png.info["parameters"]
        record = json.loads(png.info["studio-imagegen"])
    assert "Device: cpu (float32)" in text and "Compute units" not in text
    assert "computeUnits" not in record["effective"]
    assert (record["effective"]["device"], record["effective"]["dtype"]) == ("cpu", "float32")


def test_capabilities_report_the_loaded_model(warm: WorkerProcess) -> None:
    backend = warm.call("capabilities")["result"]["backend"]
    assert backend["available"] is True
    host = backend["modelHost"]
    assert host["loaded"] is True
    assert (host["device"], host["dtype"]) == ("cpu", "float32")
    assert host["lastLoadMs"] > 0
    assert backend["modelId"] == "diffusers/tiny-sd:cpu"


def test_the_worker_never_loads_torch(warm: WorkerProcess) -> None:
    host = host_of(warm)["pid"]
    assert "libtorch" in maps_of(host)
    assert "libtorch" not in maps_of(warm.pid)


@pytest.mark.parametrize("disable_safety", ["1", "0"])
def test_a_safety_checker_withholds_flagged_images_when_safety_is_on(
    tmp_path: Path, disable_safety: str
) -> None:
    require_extra()
    model = build_tiny_model(tmp_path / "with-checker", "--safety-checker", "flags-everything")
    setup = DiffusersSetup(
        tmp_path, model, SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY=disable_safety
    )
    worker = start_worker_process(setup.env)
    try:
        response, _ = generate(worker, {"prompt": "anything", "count": 2, "stepCount": 2})
    finally:
        worker.close()
    if disable_safety == "1":  # the default: the checker is not even loaded
        assert len(response["result"]["images"]) == 2
        assert response["result"]["warnings"] == []
    else:
        assert response["error"]["code"] == -32005
        assert response["error"]["data"]["reason"] == (
            "every image was withheld by the safety checker (2 of 2)"
        )


def test_an_image_the_checker_passes_is_returned(tmp_path: Path) -> None:
    require_extra()
    model = build_tiny_model(tmp_path / "lenient", "--safety-checker", "flags-nothing")
    setup = DiffusersSetup(tmp_path, model, SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY="0")
    worker = start_worker_process(setup.env)
    try:
        assert worker.call("capabilities")["result"]["backend"]["available"] is True
        response, _ = generate(worker, {"prompt": "anything", "stepCount": 2})
        assert len(response["result"]["images"]) == 1
        assert response["result"]["warnings"] == []
    finally:
        worker.close()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_worker_that_ends_mid_job_leaves_no_model_host(
    tiny_model: Path, tmp_path: Path, how: str
) -> None:
    setup = DiffusersSetup(tmp_path, tiny_model)
    worker = start_worker_process(setup.env)
    try:
        run_until_step(worker, {"prompt": "interrupted", "stepCount": 80}, 1, "job")
        assert len(setup.host_processes()) == 1
        worker.signal(signal.Signals[how])
        if how == "SIGTERM":  # shutdown: the job is answered, the host ended, files gone
            response, _ = answer_to(worker, "job")
            assert response["error"]["code"] == -32800
            assert worker.wait(LONG_WAIT) == 0
    finally:
        worker.close()
    # Killed, the worker cannot clean up: the kernel ends the host (its parent died).
    assert wait_for(lambda: not setup.host_processes(), 10), "the model host outlived its worker"
    if how == "SIGTERM":
        assert setup.leftover_temp_entries() == []


# --- configurations ------------------------------------------------------------------


def test_idle_host_unloads_and_the_next_job_loads_again(tiny_model: Path, tmp_path: Path) -> None:
    setup = DiffusersSetup(tmp_path, tiny_model, SYSTEMSCULPT_LOCAL_DIFFUSERS_IDLE_MS="1000")
    worker = start_worker_process(setup.env)
    try:
        assert "result" in generate(worker, {"prompt": "first", "stepCount": 3})[0]
        first = host_of(worker)
        assert first["idleUnloadMs"] == 1000
        assert wait_for(lambda: not setup.host_processes(), LONG_WAIT)
        assert wait_for(lambda: not host_of(worker)["loaded"])
        response, notifications = generate(worker, {"prompt": "second", "stepCount": 3})
        assert "result" in response
        assert any(n["params"]["phase"] == "loading" for n in notifications)
        assert host_of(worker)["pid"] != first["pid"]
    finally:
        worker.close()
    assert wait_for(lambda: not setup.host_processes(), 10)


def test_a_missing_model_is_reported_before_any_job(tmp_path: Path) -> None:
    require_extra()  # without it, that is what is reported first
    setup = DiffusersSetup(tmp_path, tmp_path / "no-such-model")
    worker = start_worker_process(setup.env)
    try:
        backend = worker.call("capabilities")["result"]["backend"]
        assert backend["available"] is False
        assert "names no file or directory" in backend["reason"]
        response, notifications = generate(worker, {"prompt": "anything"})
        assert response["error"]["code"] == -32002
        assert "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL" in response["error"]["message"]
        assert not [n for n in notifications if n["params"]["phase"] == "loading"]
    finally:
        worker.close()


def test_a_pipeline_of_a_family_it_does_not_run_is_refused(tmp_path: Path) -> None:
    require_extra()  # without it, that is what is reported first
    model = tmp_path / "other-model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    setup = DiffusersSetup(tmp_path, model)
    worker = start_worker_process(setup.env)
    try:
        response, _ = generate(worker, {"prompt": "anything"})
        assert response["error"]["code"] == -32002
        message = response["error"]["message"]
        assert "holds a FluxPipeline, not a pipeline this backend runs" in message
        assert "StableDiffusionXLPipeline" in message
    finally:
        worker.close()


def test_a_broken_model_fails_to_load_with_the_reason(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-sd"
    for source in tiny_model.rglob("*"):
        target = broken / source.relative_to(tiny_model)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    setup = DiffusersSetup(tmp_path, broken)
    worker = start_worker_process(setup.env)
    try:
        response, _ = generate(worker, {"prompt": "anything"})
        assert response["error"]["code"] == -32002
        assert "could not be loaded" in response["error"]["message"]
        assert "install --backend diffusers" in response["error"]["data"]["installHint"]
        host = worker.call("capabilities")["result"]["backend"]["modelHost"]
        assert host["loaded"] is False
        assert "could not be loaded as a Stable Diffusion 1.x pipeline" in host["lastLoadError"]
        assert wait_for(lambda: not setup.host_processes(), 10)
    finally:
        worker.close()


def test_without_the_extra_the_backend_says_how_to_install_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    blocked = (
        "import sys, runpy\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'diffusers', 'transformers'}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "runpy.run_module('worker', run_name='__main__')\n"
    )
    setup = DiffusersSetup(tmp_path, tiny_model)
    worker = start_worker_process(setup.env, args=[sys.executable, "-c", blocked])
    try:
        backend = worker.call("capabilities")["result"]["backend"]
        assert backend["available"] is False
        assert backend["missing"] == ["torch", "diffusers", "transformers"]
        # Into the worker's own environment, from the checkout it was installed from: the
        # package is not published, and a bare requirement would fetch a CUDA torch.
        hint = backend["installHint"]
        assert f"{sys.executable} -m pip install -e '{REPO_ROOT}[diffusers]'" in hint
        cpu_first = f"{sys.executable} -m pip install torch --index-url "
        assert hint.index(cpu_first) < hint.index("[diffusers]")
        assert "download.pytorch.org/whl/cpu" in hint
        response, _ = generate(worker, {"prompt": "anything"})
        assert response["error"]["code"] == -32002
        assert f"-e '{REPO_ROOT}[diffusers]'" in response["error"]["message"]
        assert setup.host_processes() == []
    finally:
        worker.close()


def test_an_unusable_device_setting_is_a_configuration_error(tiny_model: Path) -> None:
    settings = read_settings(
        {
            "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "diffusers",
            "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODEL": str(tiny_model),
            "SYSTEMSCULPT_LOCAL_DIFFUSERS_DEVICE": "tpu",
        }
    )
    assert [problem.variable for problem in settings.problems] == [
        "SYSTEMSCULPT_LOCAL_DIFFUSERS_DEVICE"
    ]
    assert "auto, cpu, mps, cuda or cuda:N" in settings.problems[0].reason


def test_a_device_this_machine_lacks_fails_with_the_fix(tiny_model: Path, tmp_path: Path) -> None:
    setup = DiffusersSetup(tmp_path, tiny_model, SYSTEMSCULPT_LOCAL_DIFFUSERS_DEVICE="cuda")
    worker = start_worker_process(setup.env)
    try:
        response, _ = generate(worker, {"prompt": "anything"})
        assert response["error"]["code"] == -32002
        assert "CUDA is not available" in response["error"]["message"]
        assert "DEVICE=auto or cpu" in response["error"]["message"]
        backend = worker.call("capabilities")["result"]["backend"]
        assert backend["available"] is False
        assert backend["reason"].startswith("The last load failed: SYSTEMSCULPT_LOCAL_DIFFUSERS")
        assert "CUDA is not available" in backend["modelHost"]["lastLoadError"]
        assert backend["installHint"].startswith("set SYSTEMSCULPT_LOCAL_DIFFUSERS_DEVICE=auto")
    finally:
        worker.close()


async def test_in_process_worker_renders_without_importing_torch(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = DiffusersSetup(tmp_path, tiny_model)
    for name, value in setup.env.items():
        monkeypatch.setenv(name, value)  # the host inherits the marker and the temp dir
    monkeypatch.setattr(tempfile, "tempdir", str(setup.tmp))
    async with in_process_worker(read_settings(setup.env), LINUX) as worker:
        await worker.send(request("generate", {"prompt": "in process", "stepCount": 3}, "i"))
        while "method" in (response := await worker.receive(LONG_WAIT)):
            pass
        assert response["result"]["images"][0]["width"] == 64
        assert len(setup.host_processes()) == 1
    assert "torch" not in sys.modules
    assert setup.host_processes() == []
    assert setup.leftover_temp_entries() == []


def test_a_long_lived_host_log_keeps_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "host.log"
    log.write_bytes(b"old line\n" * 200_000 + b"the latest line\n")
    trim_file(log, 1024 * 1024)
    assert log.stat().st_size == 512 * 1024
    assert log.read_bytes().endswith(b"old line\nthe latest line\n")
    small = tmp_path / "small.log"
    small.write_bytes(b"short\n")
    trim_file(small, 1024 * 1024)
    assert small.read_bytes() == b"short\n"
