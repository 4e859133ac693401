"""The wire behaviour every backend is held to, whichever runs: the mock, Core ML (through
the stand-in sampler) and diffusers (with the tiny random-weight model).

Each backend gets one worker over its real stdio, as Studio spawns it, for the whole
module; its cases run one after another on it, so the worker also shows that it keeps
serving after a cancel, a timeout or a refusal. A new backend is added to `BACKENDS`
and passes these, or says in `capabilities` what it does not do.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from protocol.models import IMAGE_SIDE_MAX, CapabilitiesResult
from tests.diffusers_setup import DiffusersSetup, require_extra
from tests.standin import StandIn
from tests.worker_clients import WorkerProcess, request, start_worker_process

BACKENDS = ("mock", "coreml_diffusion", "diffusers")
SLOW_WAIT = 180.0
"""For a first job that also starts a model host, on a busy machine."""
HOST_DIRECTORY = "studio-imagegen-host-"
"""The diffusers model host's own temp dir, which lives as long as the host."""


@dataclass
class Contracted:
    """One backend's worker, and how to see what it leaves behind."""

    backend: str
    worker: WorkerProcess
    tmp: Path
    live_processes: Callable[[], list[int]]
    long_job: dict[str, Any]
    """A request that runs for seconds (for cancel and timeout)."""

    def job_leftovers(self) -> list[str]:
        return sorted(e.name for e in self.tmp.iterdir() if not e.name.startswith(HOST_DIRECTORY))

    def generate(
        self, params: dict[str, Any], id_: Any = "g"
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.worker.exchange("generate", params, id_, timeout=SLOW_WAIT)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Contracted]:
    root = tmp_path_factory.mktemp(request.param)
    live: Callable[[], list[int]]
    if request.param == "mock":
        tmp = root / "tmp"
        tmp.mkdir()
        env = {
            "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock",
            "SYSTEMSCULPT_LOCAL_MOCK_STEP_MS": "20",
            "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "4",
            "TMPDIR": str(tmp),
        }
        live, long_job = list, {"stepCount": 80}
    elif request.param == "coreml_diffusion":
        standin = StandIn(root)
        env = {**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.02"}
        tmp, live, long_job = standin.tmp, standin.live_processes, {"stepCount": 80}
    else:
        require_extra()
        model: Path = request.getfixturevalue("tiny_model")
        setup = DiffusersSetup(root, model)
        env, tmp, live = setup.env, setup.tmp, setup.host_processes
        long_job = {"stepCount": 80, "count": 8}
    worker = start_worker_process(env)
    contracted = Contracted(request.param, worker, tmp, live, long_job)
    try:
        yield contracted
    finally:
        worker.close()
    assert live() == [], "a sampler or model host outlived its worker"
    assert sorted(entry.name for entry in tmp.iterdir()) == [], "a temp dir was left behind"


@pytest.fixture(autouse=True)
def no_job_leftovers(backend: Contracted) -> Iterator[None]:
    yield
    assert backend.job_leftovers() == [], "a job left its temp dir behind"


def capabilities(backend: Contracted) -> CapabilitiesResult:
    response = backend.worker.call("capabilities")
    return CapabilitiesResult.model_validate(response["result"])


def decoded(image: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image["base64"])))


def sampling(notifications: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        n["params"]
        for n in notifications
        if n["method"] == "progress" and n["params"]["phase"] == "sampling"
    ]


def test_capabilities_say_the_backend_is_available_and_what_it_takes(
    backend: Contracted,
) -> None:
    caps = capabilities(backend)
    assert caps.backend.id == backend.backend
    assert caps.backend.available, caps.backend.reason
    assert caps.features.text_to_image and caps.features.progress and caps.features.cancel
    assert caps.features.previews and caps.features.schedulers
    assert "1:1" in caps.features.aspect_ratios
    assert caps.defaults.scheduler in caps.features.schedulers
    square = next(b for b in caps.features.aspect_ratio_bundles if b.ratio == "1:1")
    assert (caps.limits.width.default, caps.limits.height.default) == (square.width, square.height)
    assert caps.config_errors == []


def test_progress_only_grows_and_ends_at_its_total(backend: Contracted) -> None:
    response, notifications = backend.generate({"prompt": "a red fox in snow", "seed": 3})
    (image,) = response["result"]["images"]
    steps = sampling(notifications)
    assert steps, "no sampling progress"
    totals = {step["totalSteps"] for step in steps}
    assert len(totals) == 1, totals
    (total,) = totals
    assert [s["step"] for s in steps] == sorted(s["step"] for s in steps)
    assert steps[-1]["step"] == total
    fractions = [n["params"]["fraction"] for n in notifications if n["method"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert decoded(image).size == (image["width"], image["height"])


def test_each_image_of_a_batch_says_its_index_and_the_seed_it_was_made_with(
    backend: Contracted,
) -> None:
    response, _ = backend.generate({"prompt": "two foxes", "count": 2, "seed": 11})
    images = response["result"]["images"]
    assert [image["index"] for image in images] == [0, 1]
    for image in images:
        recorded = re.search(r"Seed: (\d+)", decoded(image).info["parameters"])
        assert recorded is not None and int(recorded.group(1)) == image["seed"]
        assert f".{image['seed']}." in image["fileName"]
    assert len({image["fileName"] for image in images}) == 2


def test_cancel_mid_run_answers_minus_32800_and_the_worker_goes_on(
    backend: Contracted,
) -> None:
    worker = backend.worker
    worker.send(request("generate", {"prompt": "a long fox", **backend.long_job}, "long"))
    while True:
        message = worker.receive(SLOW_WAIT)
        if message.get("method") == "progress" and message["params"]["step"] >= 1:
            break
        assert "method" in message, message
    worker.send(request("cancel", {"requestId": "long"}, "c"))
    answers: dict[str, dict[str, Any]] = {}
    while len(answers) < 2:
        message = worker.receive(SLOW_WAIT)
        if "method" not in message:
            answers[message["id"]] = message
    assert answers["long"]["error"]["code"] == -32800
    assert answers["c"]["result"] == {"cancelled": ["long"]}
    after, _ = backend.generate({"prompt": "after the cancel"})
    assert "result" in after, after


def test_a_timeout_stops_the_job_with_minus_32004_and_the_worker_goes_on(
    backend: Contracted,
) -> None:
    backend.generate({"prompt": "warm"})  # a cold model load is not part of this job
    response, _ = backend.generate({"prompt": "too slow", "timeoutMs": 1000, **backend.long_job})
    assert response["error"]["code"] == -32004, response
    assert response["error"]["data"] == {"timeoutMs": 1000}
    after, _ = backend.generate({"prompt": "after the timeout"})
    assert "result" in after, after


def test_a_size_it_cannot_make_is_refused_before_anything_runs(backend: Contracted) -> None:
    caps = capabilities(backend)
    if caps.features.custom_sizes:
        asked, code = {"width": IMAGE_SIDE_MAX + 8, "height": 512}, -32602
    else:
        offered = {(b.width, b.height) for b in caps.features.aspect_ratio_bundles}
        width = next(w for w in range(512, IMAGE_SIDE_MAX, 64) if (w, 512) not in offered)
        asked, code = {"width": width, "height": 512}, -32001
    response, notifications = backend.generate({"prompt": "a wide fox", **asked})
    assert response["error"]["code"] == code, response
    assert sampling(notifications) == []


def test_previews_come_as_thumbnails_while_it_runs(backend: Contracted) -> None:
    response, notifications = backend.generate(
        {"prompt": "a fox", "stepCount": 4, "previewEvery": 2}
    )
    assert "result" in response, response
    previews = [n["params"] for n in notifications if n["method"] == "preview"]
    assert previews, "no preview"
    for preview in previews:
        thumbnail = decoded(preview)
        assert max(thumbnail.size) <= 256
        assert thumbnail.size == (preview["width"], preview["height"])
        assert 1 <= preview["step"] <= preview["totalSteps"] and preview["index"] == 0


def test_image_to_image_starts_from_the_reference(backend: Contracted) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 80), (200, 40, 40)).save(buffer, format="PNG")
    reference = {"mimeType": "image/png", "base64": base64.b64encode(buffer.getvalue()).decode()}
    plain, plain_progress = backend.generate({"prompt": "a fox", "stepCount": 8, "seed": 5})
    response, notifications = backend.generate(
        {
            "prompt": "a fox",
            "stepCount": 8,
            "seed": 5,
            "inputImages": [reference],
            "strength": 0.5,
        }
    )
    metadata = response["result"]["metadata"]
    assert metadata["usedReferenceImage"] is True and metadata["strength"] == 0.5
    (image,) = response["result"]["images"]
    assert decoded(image).size == (image["width"], image["height"])
    # Half the strength runs about half the steps of the same job from noise.
    assert sampling(notifications)[-1]["totalSteps"] < sampling(plain_progress)[-1]["totalSteps"]
    assert "result" in plain


def test_the_default_model_is_listed_and_naming_it_changes_nothing(backend: Contracted) -> None:
    caps = capabilities(backend)
    defaults = [model for model in caps.models if model.default]
    assert len(defaults) == 1
    (default,) = defaults
    assert (default.backend, default.usable, caps.default_model) == (
        backend.backend,
        True,
        default.id,
    )
    params = {"prompt": "the same either way", "seed": 9, "stepCount": 2}
    plain, _ = backend.generate(params)
    named, _ = backend.generate({**params, "model": default.id})
    assert (
        named["result"]["metadata"]["model"] == default.id == plain["result"]["metadata"]["model"]
    )
    first, second = (decoded(r["result"]["images"][0]) for r in (plain, named))
    assert first.tobytes() == second.tobytes()
    unknown, _ = backend.generate({**params, "model": f"{backend.backend}/no-such-model"})
    assert unknown["error"]["code"] == -32001
    assert default.id in unknown["error"]["data"]["supported"]
