"""Every installed model listed in `capabilities` and chosen per request: Core ML bundles
of each family (fake bundles run by the stand-in sampler) and tiny diffusers pipelines of
each family, in one worker over its real stdio, the way Studio drives it."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fixtures.resources import make_resource_dir
from tests.standin import StandIn
from tests.worker_clients import MACOS, WorkerProcess, in_process_worker, start_worker_process
from worker.backends.registry import read_settings

SD21 = "coreml_diffusion/resources"
XL = "coreml_diffusion/sdxl-base"
SD3 = "coreml_diffusion/sd3-medium"
REFINER = "coreml_diffusion/sdxl-refiner"
BROKEN = "coreml_diffusion/broken-xl"


def add_bundles(standin: StandIn) -> None:
    """The models folder of a Mac with Apple's SDXL bundle (unzipped as `<name>/compiled/`,
    original attention), an SD3 bundle, a refiner, and an SDXL bundle missing a file."""
    models = standin.models
    make_resource_dir(
        models / "sdxl-base" / "compiled", size=(1024, 1024), family="sdxl", attention="original"
    )
    make_resource_dir(models / "sd3-medium", family="sd3")
    make_resource_dir(models / "sdxl-refiner", size=(1024, 1024), family="sdxl", refiner=True)
    make_resource_dir(models / "broken-xl", ["TextEncoder2.mlmodelc"], family="sdxl")


def image_of(result: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(result["images"][0]["base64"])))


def pixels(result: dict[str, Any]) -> bytes:
    return image_of(result).tobytes()


def sampler_runs(argv_file: Path) -> list[list[str]]:
    """Each command line the stand-in sampler was started with, in order."""
    return [json.loads(line) for line in argv_file.read_text().splitlines()]


@pytest.fixture
def bundles(standin: StandIn, tmp_path: Path) -> Iterator[tuple[WorkerProcess, Path]]:
    add_bundles(standin)
    argv_file = tmp_path / "sampler-argv.jsonl"
    worker = start_worker_process({**standin.env, "STANDIN_SD_ARGV_FILE": str(argv_file)})
    try:
        yield worker, argv_file
    finally:
        worker.close()


def by_id(capabilities: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {model["id"]: model for model in capabilities["models"]}


def test_capabilities_lists_each_bundle_with_its_family_size_and_controls(
    bundles: tuple[WorkerProcess, Path],
) -> None:
    worker, _ = bundles
    capabilities = worker.call("capabilities")["result"]
    models = by_id(capabilities)
    assert capabilities["defaultModel"] == SD21
    assert {SD21, XL, SD3, REFINER, BROKEN} <= set(models)

    default = models[SD21]
    assert (default["family"], default["default"], default["usable"]) == ("sd2", True, True)
    assert default["schedulers"] == ["pndm", "dpmpp"]

    xl = models[XL]
    assert (xl["family"], xl["variant"], xl["usable"]) == ("sdxl", "base", True)
    assert (xl["nativeWidth"], xl["nativeHeight"]) == (1024, 1024)
    assert xl["sizes"] == [{"ratio": "1:1", "width": 1024, "height": 1024}]
    assert xl["guidanceScale"]["min"] == 1.0  # its pipeline always runs guidance
    assert xl["attention"] == "original"
    assert xl["path"].endswith("sdxl-base/compiled")

    sd3 = models[SD3]
    assert (sd3["family"], sd3["schedulers"]) == ("sd3", ["flow_match"])

    refiner = models[REFINER]
    assert refiner["variant"] == "refiner"
    assert any("only from a reference" in note for note in refiner["notes"])

    broken = models[BROKEN]
    assert broken["usable"] is False
    assert (
        "incomplete Stable Diffusion XL bundle: TextEncoder2.mlmodelc missing"
        in (broken["problem"])
    )
    assert "unzip its download again" in broken["fix"]


def test_each_bundle_makes_its_image_with_its_flags_in_one_session(
    bundles: tuple[WorkerProcess, Path],
) -> None:
    worker, argv_file = bundles
    request = {"prompt": "a red fox", "seed": 11, "stepCount": 3}
    first = worker.call("generate", request)["result"]
    xl = worker.call("generate", {**request, "model": XL})["result"]
    sd3 = worker.call("generate", {**request, "model": SD3, "stepCount": 2})["result"]
    again = worker.call("generate", request)["result"]

    assert image_of(first).size == (512, 512)
    assert image_of(xl).size == (1024, 1024)
    assert pixels(again) == pixels(first)  # back to the default: the same image
    assert (first["metadata"]["model"], first["metadata"]["family"]) == (SD21, "sd2")
    assert (xl["metadata"]["model"], xl["metadata"]["family"]) == (XL, "sdxl")
    assert first["modelId"] == (
        "local/macos-coreml-stable-diffusion-2-1-base-palettized:cpuAndNeuralEngine"
    )
    # original attention runs best on the GPU: the default compute units follow the model
    assert xl["modelId"] == "local/macos-coreml-sdxl-base:cpuAndGPU"
    assert xl["metadata"]["sources"]["computeUnits"] == "model"
    assert sd3["metadata"]["scheduler"] == "flow_match"
    assert sd3["metadata"]["sources"]["scheduler"] == "model"

    runs = sampler_runs(argv_file)
    assert len(runs) == 4
    assert "--xl" not in runs[0] and "--sd3" not in runs[0]
    assert "--xl" in runs[1] and any(arg.endswith("sdxl-base/compiled") for arg in runs[1])
    assert "--compute-units=cpuAndGPU" in runs[1]
    assert "--sd3" in runs[2]
    assert not any(arg.startswith("--scheduler") for arg in runs[2])  # SD3 ignores it
    assert runs[3] == [arg if "--output-path" not in arg else runs[3][1] for arg in runs[0]]


def test_an_unknown_or_broken_model_is_refused_before_anything_runs(
    bundles: tuple[WorkerProcess, Path],
) -> None:
    worker, argv_file = bundles
    unknown = worker.call("generate", {"prompt": "fox", "model": "coreml_diffusion/nope"})
    assert unknown["error"]["code"] == -32001
    assert "is not one of this worker's models" in unknown["error"]["message"]
    assert set(unknown["error"]["data"]["supported"]) >= {SD21, XL, SD3}
    assert BROKEN not in unknown["error"]["data"]["supported"]

    broken = worker.call("generate", {"prompt": "fox", "model": BROKEN})
    assert broken["error"]["code"] == -32002
    message = broken["error"]["message"]
    assert "TextEncoder2.mlmodelc missing" in message and "The usable models are" in message
    assert not argv_file.exists()  # no sampler was started

    works = worker.call("generate", {"prompt": "fox", "model": XL, "stepCount": 2})
    assert "result" in works  # the others are unaffected


@pytest.mark.parametrize(
    ("model", "params", "code", "said"),
    [
        (XL, {"guidanceScale": 0}, -32602, "always runs guidance"),
        (REFINER, {}, -32001, "makes images only from a reference"),
        (SD3, {"scheduler": "dpmpp"}, -32001, "always run their discrete flow scheduler"),
    ],
)
def test_what_the_sampler_would_get_wrong_is_refused(
    bundles: tuple[WorkerProcess, Path],
    model: str,
    params: dict[str, Any],
    code: int,
    said: str,
) -> None:
    worker, argv_file = bundles
    response = worker.call("generate", {"prompt": "fox", "model": model, **params})
    assert response["error"]["code"] == code
    assert said in response["error"]["message"]
    assert not argv_file.exists()


async def test_below_macos_14_an_xl_bundle_is_listed_unusable_and_refused(
    standin: StandIn,
) -> None:
    """The sampler would ignore --xl there and run the SD 1.x/2.x pipeline on it."""
    add_bundles(standin)
    ventura = type(MACOS)(system="Darwin", os_version="13.6", machine="arm64", python="3.11.7")
    async with in_process_worker(read_settings(standin.env), ventura) as worker:
        capabilities = (await worker.call("capabilities"))["result"]
        xl = by_id(capabilities)[XL]
        assert xl["usable"] is False and "needs macOS 14 or later" in xl["problem"]
        assert by_id(capabilities)[SD21]["usable"] is True
        response = await worker.call("generate", {"prompt": "fox", "model": XL})
    assert response["error"]["code"] == -32002
    assert "needs macOS 14 or later" in response["error"]["message"]


def test_a_request_without_model_runs_the_configured_bundle_as_before(
    standin: StandIn, tmp_path: Path
) -> None:
    """Bundles in the models folder change nothing for a graph that names no model."""
    argv_file = tmp_path / "argv.jsonl"
    env = {**standin.env, "STANDIN_SD_ARGV_FILE": str(argv_file)}
    request = {"prompt": "a red fox", "seed": 5, "stepCount": 3}
    worker = start_worker_process(env)
    try:
        before = worker.call("generate", request)["result"]
    finally:
        worker.close()
    add_bundles(standin)
    worker = start_worker_process(env)
    try:
        after = worker.call("generate", request)["result"]
    finally:
        worker.close()
    first, second = sampler_runs(argv_file)
    assert [a for a in first if "--output-path" not in a] == [
        a for a in second if "--output-path" not in a
    ]
    assert pixels(before) == pixels(after)
    assert before["modelId"] == after["modelId"]


# --- diffusers: tiny pipelines of each family ---------------------------------------


def _models_folder(tmp_path: Path, *models: Path) -> Path:
    """A diffusers models folder holding `models` (linked, as a user may link them)."""
    folder = tmp_path / "diffusers-models"
    folder.mkdir(exist_ok=True)
    for model in models:
        (folder / model.name).symlink_to(model, target_is_directory=True)
    return folder


@pytest.mark.diffusers
def test_one_session_runs_an_sd21_bundle_an_sdxl_bundle_and_a_tiny_sdxl_model(
    standin: StandIn, tmp_path: Path, tiny_sdxl: Path
) -> None:
    """Core ML is the configured backend; the diffusers model comes from its folder."""
    add_bundles(standin)
    folder = _models_folder(tmp_path, tiny_sdxl)
    env = {**standin.env, "SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR": str(folder)}
    worker = start_worker_process(env)
    try:
        models = by_id(worker.call("capabilities")["result"])
        tiny = models["diffusers/tiny-sdxl"]
        assert (tiny["family"], tiny["usable"], tiny["loaded"]) == ("sdxl", True, False)
        request = {"prompt": "a red fox", "seed": 4, "stepCount": 2}
        made = {
            model: worker.exchange("generate", {**request, "model": model}, timeout=300)[0][
                "result"
            ]
            for model in (SD21, XL, "diffusers/tiny-sdxl")
        }
        after = by_id(worker.call("capabilities")["result"])
    finally:
        worker.close()
    assert image_of(made[SD21]).size == (512, 512)
    assert image_of(made[XL]).size == (1024, 1024)
    assert image_of(made["diffusers/tiny-sdxl"]).size == (64, 64)
    assert made["diffusers/tiny-sdxl"]["metadata"]["family"] == "sdxl"
    assert made["diffusers/tiny-sdxl"]["modelId"] == "diffusers/tiny-sdxl:cpu"
    assert after["diffusers/tiny-sdxl"]["loaded"] is True


@pytest.fixture(scope="module")
def three_families(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_sdxl: Path, tiny_sd3: Path
) -> Iterator[tuple[WorkerProcess, Path]]:
    """A diffusers worker configured with tiny SD 1.x, with tiny SDXL and SD3 in its
    models folder."""
    from tests.diffusers_setup import DiffusersSetup

    root = tmp_path_factory.mktemp("three-families")
    folder = _models_folder(root, tiny_sdxl, tiny_sd3)
    setup = DiffusersSetup(root, tiny_model, SYSTEMSCULPT_LOCAL_DIFFUSERS_MODELS_DIR=str(folder))
    worker = start_worker_process(setup.env)
    try:
        yield worker, folder
    finally:
        worker.close()


@pytest.mark.diffusers
def test_diffusers_lists_each_family_and_switches_back_and_forth_reproducibly(
    three_families: tuple[WorkerProcess, Path],
) -> None:
    worker, _ = three_families
    capabilities = worker.call("capabilities")["result"]
    models = by_id(capabilities)
    assert capabilities["defaultModel"] == "diffusers/tiny-sd"
    assert models["diffusers/tiny-sdxl"]["family"] == "sdxl"
    assert models["diffusers/tiny-sd3"]["family"] == "sd3"
    assert models["diffusers/tiny-sd3"]["schedulers"] == ["flow_match"]
    assert "lcm" in models["diffusers/tiny-sdxl"]["schedulers"]

    request = {"prompt": "a lighthouse", "seed": 21, "stepCount": 2}
    order = ["diffusers/tiny-sd", "diffusers/tiny-sdxl", "diffusers/tiny-sd3"] * 2
    results = []
    for model in order:
        response, notifications = worker.exchange(
            "generate", {**request, "model": model}, timeout=300
        )
        loading = [
            n["params"]["message"]
            for n in notifications
            if n["method"] == "progress" and n["params"]["phase"] == "loading"
        ]
        results.append((model, response["result"], loading))
    for index, (model, result, loading) in enumerate(results):
        assert result["metadata"]["model"] == model
        if index:  # every job here is for another model than the last: a reload
            assert any(message.startswith("Switching from") for message in loading), loading
    first, second = results[:3], results[3:]
    for (model, one, _), (_, other, _) in zip(first, second, strict=True):
        assert pixels(one) == pixels(other), f"{model} made another image the second time"
    assert len({pixels(result) for _, result, _ in first}) == 3
    assert any("its last load took" in message for message in results[3][2])
    host = worker.call("capabilities")["result"]
    assert by_id(host)["diffusers/tiny-sd3"]["loaded"] is True
    assert by_id(host)["diffusers/tiny-sd"]["loaded"] is False


@pytest.mark.diffusers
def test_a_broken_diffusers_model_is_listed_unusable_and_the_others_still_run(
    three_families: tuple[WorkerProcess, Path], tmp_path: Path
) -> None:
    worker, folder = three_families
    broken = folder / "half-downloaded"
    broken.mkdir()
    (broken / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "x"]})
    )
    try:
        models = by_id(worker.call("capabilities")["result"])
        entry = models["diffusers/half-downloaded"]
        assert entry["usable"] is False and entry["problem"]
        refused = worker.call("generate", {"prompt": "fox", "model": entry["id"]})
        assert refused["error"]["code"] == -32002
        assert "diffusers/tiny-sdxl" in refused["error"]["message"]
        fine = worker.exchange(
            "generate",
            {"prompt": "fox", "model": "diffusers/tiny-sdxl", "stepCount": 1},
            timeout=300,
        )[0]
        assert "result" in fine
    finally:
        (broken / "model_index.json").unlink()
        broken.rmdir()


DENOISER_CALLS = """
import json, sys, tempfile
from pathlib import Path
from worker.backends.diffusers.host import messages, pipeline

model = pipeline.load(Path(sys.argv[1]), "cpu", "float32", safety=False)
job = json.loads(sys.argv[2])
pipe = model.text_to_image
denoiser = getattr(pipe, "unet", None) or pipe.transformer
batches = []
forward = denoiser.forward
def counted(*args, **kwargs):
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    batches.append(int(sample.shape[0]))
    return forward(*args, **kwargs)
denoiser.forward = counted
with tempfile.TemporaryDirectory() as output:
    steps = []
    job = messages.HostJob.model_validate({**job, "output_dir": output})
    pipeline.render(model, job, __import__("threading").Event(), lambda m: steps.append(m))
print(json.dumps({"batches": batches, "images": sum(m.type == "image" for m in steps)}))
"""


@pytest.mark.diffusers
@pytest.mark.parametrize(
    ("family", "scheduler", "steps", "guidance", "batches"),
    [
        ("sdxl", "euler_a_trailing", 1, 0.0, [1]),
        ("sd1", "lcm", 2, 1.0, [1, 1]),
        ("sd3", "flow_match", 1, 0.0, [1]),
        ("sdxl", "dpmpp_karras", 2, 5.0, [2, 2]),  # with guidance: both halves at once
    ],
)
def test_few_step_settings_call_the_denoiser_once_a_step_without_guidance(
    request: pytest.FixtureRequest,
    family: str,
    scheduler: str,
    steps: int,
    guidance: float,
    batches: list[int],
) -> None:
    import subprocess
    import sys

    from tests.worker_clients import REPO_ROOT, worker_environment

    model = request.getfixturevalue(
        {"sd1": "tiny_model", "sdxl": "tiny_sdxl", "sd3": "tiny_sd3"}[family]
    )
    job = {
        "prompt": "a fox",
        "negative_prompt": "",
        "seed": 1,
        "count": 1,
        "width": 64,
        "height": 64,
        "strength": None,
        "preview_every": 0,
        "sampling": {
            "step_count": steps,
            "guidance_scale": guidance,
            "scheduler": scheduler,
            "reduce_memory": False,
        },
    }
    ran = subprocess.run(
        [sys.executable, "-c", DENOISER_CALLS, str(model), json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=worker_environment({"HF_HUB_OFFLINE": "1"}),
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    counted = json.loads(ran.stdout.splitlines()[-1])
    assert counted == {"batches": batches, "images": 1}


REFERENCE_PHOTO = Path(__file__).resolve().parents[1] / "fixtures" / "reference-photo.jpg"


@pytest.mark.diffusers
@pytest.mark.parametrize("model", ["diffusers/tiny-sdxl", "diffusers/tiny-sd3"])
def test_sdxl_and_sd3_do_image_to_image_with_progress_previews_and_seeds(
    three_families: tuple[WorkerProcess, Path], model: str
) -> None:
    worker, _ = three_families
    reference = {
        "mimeType": "image/jpeg",
        "base64": base64.b64encode(REFERENCE_PHOTO.read_bytes()).decode(),
    }
    params = {"prompt": "a photo", "model": model, "seed": 40, "stepCount": 6, "count": 2}
    plain = worker.exchange("generate", params, timeout=300)[0]["result"]
    response, notifications = worker.exchange(
        "generate",
        {**params, "inputImages": [reference], "strength": 0.5, "previewEvery": 1},
        timeout=300,
    )
    result = response["result"]
    assert result["metadata"]["usedReferenceImage"] is True
    assert [image["seed"] for image in result["images"]] == [40, 41]
    steps = [
        (n["params"]["step"], n["params"]["totalSteps"])
        for n in notifications
        if n["method"] == "progress" and n["params"]["phase"] == "sampling"
    ]
    total = steps[-1][1]
    assert steps[-1] == (total, total) and [s for s, _ in steps] == sorted({s for s, _ in steps})
    assert total < 2 * len([n for n in steps if n[0]]) + 2  # the strength cut the schedule
    previews = [n["params"] for n in notifications if n["method"] == "preview"]
    assert {p["index"] for p in previews} == {0, 1} and all(p["base64"] for p in previews)
    assert pixels(result) != pixels(plain)


@pytest.mark.diffusers
def test_each_family_says_how_it_previews(three_families: tuple[WorkerProcess, Path]) -> None:
    worker, _ = three_families
    models = by_id(worker.call("capabilities")["result"])
    assert models["diffusers/tiny-sdxl"]["previewDecoders"] == ["latent", "vae"]
    assert models["diffusers/tiny-sd3"]["previewDecoders"] == ["vae"]
    refused = worker.call(
        "generate",
        {
            "prompt": "x",
            "model": "diffusers/tiny-sd3",
            "previewEvery": 1,
            "previewDecoder": "latent",
        },
    )
    assert refused["error"]["code"] == -32001
    assert refused["error"]["data"] == {"feature": "previewDecoder", "supported": ["vae"]}


@pytest.mark.diffusers
def test_an_sdxl_job_is_cancelled_at_a_step(three_families: tuple[WorkerProcess, Path]) -> None:
    worker, _ = three_families
    params = {"prompt": "long", "model": "diffusers/tiny-sdxl", "stepCount": 80}
    worker.send({"jsonrpc": "2.0", "id": "long", "method": "generate", "params": params})
    for message in worker.messages(timeout=300):
        params_ = message.get("params", {})
        if message.get("method") == "progress" and params_.get("step", 0) >= 1:
            break  # sampling
    worker.send({"jsonrpc": "2.0", "id": "c", "method": "cancel", "params": {"requestId": "long"}})
    answers: dict[str, Any] = {}
    for message in worker.messages(timeout=60):
        if "id" in message:
            answers[message["id"]] = message
        if len(answers) == 2:
            break
    assert answers["c"]["result"]["cancelled"] == ["long"]
    assert answers["long"]["error"]["code"] == -32800
