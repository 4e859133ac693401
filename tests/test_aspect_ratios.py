"""Native aspect ratios: a model manifest maps each ratio to a bundle converted for its
size; the worker picks the bundle, checks it against what the bundle declares, and says
which ratios it can make."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fixtures.resources import make_resource_dir
from tests.standin import StandIn
from tests.worker_clients import WorkerProcess, request
from worker.backends.coreml.bundles import MANIFEST_SCHEMA

StartWorker = Callable[..., WorkerProcess]


def _manifest(tmp_path: Path, ratios: dict[str, dict[str, Any]]) -> Path:
    path = tmp_path / "models" / "model-manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"schema": MANIFEST_SCHEMA, "version": 1, "profileId": "test", "ratios": ratios}
    path.write_text(json.dumps(document))
    return path


def _worker(
    standin: StandIn, worker_process: StartWorker, manifest: Path, home: Path
) -> WorkerProcess:
    env = {**standin.env, "SYSTEMSCULPT_LOCAL_DIFFUSION_MODEL_MANIFEST": str(manifest)}
    del env["SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH"]  # every ratio from the manifest
    return worker_process({**env, "HOME": str(home)})


def _two_of_five(tmp_path: Path) -> Path:
    """1:1 and 16:9 installed (16:9 by a path relative to the manifest), the rest not."""
    models = tmp_path / "models"
    make_resource_dir(models / "square", size=(512, 512))
    make_resource_dir(models / "wide", size=(1024, 576))
    return _manifest(
        tmp_path,
        {
            "1:1": {"width": 512, "height": 512, "resourcePath": str(models / "square")},
            "4:3": {"width": 768, "height": 576, "resourcePath": "${HOME}/not-converted-4x3"},
            "3:4": {"width": 576, "height": 768, "resourcePath": str(models / "tall-3x4")},
            "16:9": {"width": 1024, "height": 576, "resourcePath": "wide"},
            "9:16": {"width": 576, "height": 1024, "resourcePath": str(models / "tall-9x16")},
        },
    )


def test_every_ratio_of_a_manifest_with_two_bundles_present(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    manifest = _two_of_five(tmp_path)
    worker = _worker(standin, worker_process, manifest, home)
    features = worker.call("capabilities")["result"]["features"]
    assert features["aspectRatios"] == ["1:1", "16:9"]
    bundles = {b["ratio"]: b for b in features["aspectRatioBundles"]}
    assert list(bundles) == ["1:1", "4:3", "3:4", "16:9", "9:16"]
    assert {ratio: b["present"] for ratio, b in bundles.items()} == {
        "1:1": True,
        "4:3": False,
        "3:4": False,
        "16:9": True,
        "9:16": False,
    }
    assert bundles["4:3"]["resourcePath"] == str(home / "not-converted-4x3")
    assert bundles["16:9"]["resourcePath"] == str(tmp_path / "models" / "wide")

    for ratio, size in [("1:1", (512, 512)), ("16:9", (1024, 576))]:
        answer = worker.call("generate", {"prompt": "fox", "aspectRatio": ratio}, id_=ratio)
        image = answer["result"]["images"][0]
        assert (image["width"], image["height"]) == size
        metadata = answer["result"]["metadata"]
        assert metadata["requestedAspectRatio"] == metadata["actualAspectRatio"] == ratio
        assert (metadata["width"], metadata["height"]) == size
        assert metadata["manifestPath"] == str(manifest)
        assert metadata["resourcePathSource"] == "manifest"
    for ratio in ("4:3", "3:4", "9:16", "2:1"):
        answer = worker.call("generate", {"prompt": "fox", "aspectRatio": ratio}, id_=ratio)
        error = answer["error"]
        assert error["code"] == -32001, answer
        assert error["data"] == {"feature": "aspectRatio", "supported": ["1:1", "16:9"]}
        assert "The installed bundles make 1:1, 16:9" in error["message"]


def test_an_entry_that_disagrees_with_its_bundle_is_a_config_error_for_that_ratio(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    make_resource_dir(models / "square")
    make_resource_dir(models / "wrong", size=(512, 512))
    manifest = _manifest(
        tmp_path,
        {
            "1:1": {"width": 512, "height": 512, "resourcePath": str(models / "square")},
            "4:3": {"width": 768, "height": 576, "resourcePath": str(models / "wrong")},
        },
    )
    worker = _worker(standin, worker_process, manifest, tmp_path)
    caps = worker.call("capabilities")["result"]
    (problem,) = caps["configErrors"]
    assert problem["variable"] == "SYSTEMSCULPT_LOCAL_DIFFUSION_MODEL_MANIFEST"
    assert "makes 512x512 images, not the 768x576 its entry says" in problem["reason"]
    assert caps["features"]["aspectRatios"] == ["1:1"]
    wrong = worker.call("generate", {"prompt": "fox", "aspectRatio": "4:3"}, id_="w")
    assert wrong["error"]["code"] == -32007
    square = worker.call("generate", {"prompt": "fox"}, id_="s")
    assert "result" in square


def test_an_unreadable_manifest_is_named_and_1_1_still_works(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path
) -> None:
    manifest = tmp_path / "broken.json"
    manifest.write_text("{not json")
    env = {**standin.env, "SYSTEMSCULPT_LOCAL_DIFFUSION_MODEL_MANIFEST": str(manifest)}
    worker = worker_process(env)
    caps = worker.call("capabilities")["result"]
    assert "cannot be read as JSON" in caps["configErrors"][0]["reason"]
    assert caps["features"]["aspectRatios"] == ["1:1"]  # from the resource path
    assert "result" in worker.call("generate", {"prompt": "fox"}, id_="g")


def test_image_to_image_at_16_9_prepares_the_reference_at_the_bundles_size(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path
) -> None:
    from PIL import Image

    home = tmp_path / "home"
    home.mkdir()
    worker = _worker(standin, worker_process, _two_of_five(tmp_path), home)
    reference = tmp_path / "ref.png"
    Image.new("RGB", (300, 300), (1, 2, 3)).save(reference)
    params = {
        "prompt": "fox",
        "aspectRatio": "16:9",
        "inputImages": [{"mimeType": "image/png", "path": str(reference)}],
    }
    worker.send(request("generate", params, "g"))
    while "method" in (answer := worker.receive(60)):
        pass
    assert answer["result"]["images"][0]["width"] == 1024, answer


def test_core_ml_makes_a_size_only_where_a_bundle_was_converted_for_it(
    standin: StandIn, worker_process: StartWorker, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    worker = _worker(standin, worker_process, _two_of_five(tmp_path), home)
    caps = worker.call("capabilities")["result"]
    assert caps["features"]["customSizes"] is False
    assert caps["limits"]["width"] == {"min": 512, "max": 1024, "default": 512}
    assert caps["limits"]["height"] == {"min": 512, "max": 1024, "default": 512}

    wide, _ = worker.exchange("generate", {"prompt": "fox", "width": 1024, "height": 576})
    metadata = wide["result"]["metadata"]
    assert (metadata["width"], metadata["height"]) == (1024, 576)
    assert metadata["requestedAspectRatio"] == "16:9"

    other, notifications = worker.exchange(
        "generate", {"prompt": "fox", "width": 768, "height": 512}
    )
    assert other["error"]["code"] == -32001
    assert other["error"]["data"] == {"feature": "size", "supported": ["512x512", "1024x576"]}
    assert "diffusers backend" in other["error"]["message"]
    assert notifications == []


def test_a_size_is_whole_on_the_grid_and_not_beside_a_ratio(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process(standin.env)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"width": 512}, "width and height go together"),
        ({"width": 500, "height": 512}, "multiple of 8"),
        ({"width": 4096, "height": 512}, "less than or equal to 2048"),
        ({"width": 512, "height": 512, "aspectRatio": "1:1"}, "not both"),
    ]
    for size, reason in cases:
        response = worker.call("generate", {"prompt": "fox", **size})
        assert response["error"]["code"] == -32602, response
        assert reason in response["error"]["message"], response
