"""LoRA: listed per model from the LoRA folder (told from each file's header), applied by
the diffusers model host without loading the model again, refused where it cannot be;
and the diffusers backend's prompt weights and clip skip, compared by their pixels."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.diffusers_setup import DiffusersSetup
from tests.test_client import _client
from tests.test_controlnet import mock_call, pixels
from tests.worker_clients import WorkerProcess, start_worker_process, worker_environment
from worker.backends.diffusers.loras import find_loras

Message = dict[str, Any]
LONG_WAIT = 120.0
BASE = {"prompt": "a fox", "seed": 5, "width": 64, "height": 64, "stepCount": 3}


def header_only(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A safetensors file of these tensors' header (what the listing reads) and zeros."""
    header: dict[str, Any] = {}
    offset = 0
    for key, shape in shapes.items():
        size = 2 * shape[0] * shape[1]
        header[key] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(offset))
    return path


def test_the_listing_tells_each_loras_family_from_its_header(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    text_key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    header_only(folder / "sd15-diffusers.safetensors", {f"unet.{text_key}.lora_A.weight": [4, 768]})
    header_only(
        folder / "kohya" / "xl.safetensors",
        {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [8, 2048]},
    )
    header_only(folder / "sd2.safetensors", {f"unet.{text_key}.lora.down.weight": [4, 1024]})
    header_only(
        folder / "sd35-large.safetensors",
        {"transformer.transformer_blocks.0.attn.to_k.lora_A.weight": [16, 2432]},
    )
    header_only(folder / "not-a-lora.safetensors", {"model.weight": [4, 4]})
    (folder / "broken.safetensors").write_bytes(b"\xff" * 12)
    found = {lora.name: (lora.family, lora.width) for lora in find_loras(folder)}
    assert found == {
        "sd15-diffusers": ("sd1", 768),
        "kohya/xl": ("sdxl", 2048),
        "sd2": ("sd2", 1024),
        "sd35-large": ("sd3", 2432),
    }
    assert find_loras(tmp_path / "nowhere") == []


async def test_the_mock_and_its_wire_refuse_loras_saying_why() -> None:
    refused = await mock_call("generate", {**BASE, "loras": [{"name": "style"}]})
    assert (refused["error"]["code"], refused["error"]["data"]["feature"]) == (-32001, "loras")
    assert "it has no LoRA" in refused["error"]["message"]
    twice = await mock_call("generate", {**BASE, "loras": [{"name": "a"}, {"name": "a"}]})
    assert twice["error"]["code"] == -32602
    assert "more than once" in twice["error"]["message"]
    too_strong = await mock_call("generate", {**BASE, "loras": [{"name": "a", "weight": 5}]})
    assert too_strong["error"]["code"] == -32602
    models = (await mock_call("capabilities"))["result"]["models"]
    [listed] = [model for model in models if model["backend"] == "mock"]
    assert listed["loras"] == [] and "no LoRA" in listed["lorasReason"]
    core_ml_listing_says_to_merge(models)


def core_ml_listing_says_to_merge(models: list[Message]) -> None:
    core_ml = [model for model in models if model["backend"] == "coreml_diffusion"]
    assert core_ml
    for model in core_ml:
        assert model["loras"] == []
        assert "merge the LoRA into the model" in model["lorasReason"]


# --- diffusers, for real, over stdio ----------------------------------------------------


def worker_with_loras(model: Path, loras: Path, tmp_path: Path) -> tuple[WorkerProcess, Message]:
    setup = DiffusersSetup(tmp_path, model, SYSTEMSCULPT_LOCAL_DIFFUSERS_LORAS_DIR=str(loras))
    worker = start_worker_process(setup.env)
    models = worker.call("capabilities")["result"]["models"]
    core_ml_listing_says_to_merge(models)
    return worker, {m["path"]: m for m in models}[str(model)]


def made(worker: WorkerProcess, label: str, **params: Any) -> tuple[bytes, Message]:
    answer, _ = worker.exchange("generate", {**BASE, **params}, label, LONG_WAIT)
    assert "result" in answer, answer
    return pixels(answer["result"]["images"][0]), answer["result"]


@pytest.mark.diffusers
def test_diffusers_applies_loras_by_weight_without_reloading(
    tiny_model: Path, tiny_loras: Path, tmp_path: Path
) -> None:
    worker, listed = worker_with_loras(tiny_model, tiny_loras, tmp_path)
    try:
        assert [lora["name"] for lora in listed["loras"]] == ["sd1/other", "sd1/style"]
        assert listed["lorasReason"] == ""
        base, _ = made(worker, "base")
        host = worker.call("capabilities")["result"]["backend"]["modelHost"]["pid"]
        images = {}
        for label, loras in {
            "style 0": [{"name": "sd1/style", "weight": 0}],
            "style 1": [{"name": "sd1/style"}],
            "style 0.5": [{"name": "sd1/style", "weight": 0.5}],
            "other": [{"name": "sd1/other"}],
            "both": [{"name": "sd1/style"}, {"name": "sd1/other", "weight": 0.7}],
            "negative": [{"name": "sd1/style", "weight": -1}],
        }.items():
            images[label], result = made(worker, label, loras=loras)
        assert images["style 0"] == base  # the base model's image, bit for bit
        distinct = [base, *(images[k] for k in images if k != "style 0")]
        assert len(set(distinct)) == len(distinct)
        assert result["metadata"]["loras"] == [
            {"name": "sd1/style", "weight": -1.0, "path": str(tiny_loras / "sd1/style.safetensors")}
        ]
        again, _ = made(worker, "base again")
        assert again == base  # the adapters switched off, not left applied
        style_again, _ = made(worker, "style again", loras=[{"name": "sd1/style"}])
        assert style_again == images["style 1"]
        status = worker.call("capabilities")["result"]["backend"]["modelHost"]
        assert status["pid"] == host  # one host, one load: the LoRAs switched in it

        for loras, said in (
            ([{"name": "xl-style"}], "'xl-style' is a LoRA for models that read text 64 wide"),
            # as wide as this model's text, but for a transformer: not offered, not applied
            ([{"name": "sd3-style"}], "'sd3-style' is a LoRA for SD 3 transformers 32 wide"),
            ([{"name": "missing"}], "no LoRA named 'missing' is installed"),
        ):
            refused = worker.call("generate", {**BASE, "loras": loras})
            error = refused["error"]
            assert error["code"] == -32602, error
            assert error["data"]["errors"][0]["field"] == "loras.0.name"
            assert said in error["message"] and "sd1/other, sd1/style" in error["message"]
    finally:
        worker.close()


@pytest.mark.diffusers
def test_diffusers_weighs_prompts_and_skips_clip_layers(
    tiny_model: Path, tiny_loras: Path, tmp_path: Path
) -> None:
    worker, listed = worker_with_loras(tiny_model, tiny_loras, tmp_path)
    try:
        assert (listed["promptWeights"], listed["clipSkip"]) == (True, True)
        plain, result = made(worker, "plain", prompt="a red fox")
        assert result["metadata"]["clipSkip"] == 1
        images = {
            "weights of 1": made(worker, "1", prompt="(a red fox:1.0)")[0],
            "red up": made(worker, "up", prompt="a (red:1.6) fox")[0],
            "red down": made(worker, "down", prompt="a [red] fox")[0],
            "literal": made(worker, "literal", prompt=r"a \(red\) fox")[0],
            "clip skip 1": made(worker, "skip 1", prompt="a red fox", clipSkip=1)[0],
            "clip skip 2": made(worker, "skip 2", prompt="a red fox", clipSkip=2)[0],
            "negative": made(worker, "neg", prompt="a red fox", negativePrompt="(blue:1.5)")[0],
        }
        # The embedding the host weighs is the pipeline's own where every weight is 1.
        assert images["weights of 1"] == plain
        assert images["clip skip 1"] == plain
        same_as_plain = ("weights of 1", "clip skip 1")
        others = [plain, *(v for k, v in images.items() if k not in same_as_plain)]
        assert len(set(others)) == len(others)
        # A weighted prompt is read to its end, past the encoder's 77 tokens.
        words = "a (red:1.2) fox in the snow, " * 4  # over 77 of the tiny tokenizer's tokens
        ends = {made(worker, tail, prompt=words + tail)[0] for tail in ("blue", "green")}
        assert len(ends) == 2
        lora = [{"name": "sd1/style"}]
        with_lora, result = made(worker, "lora", prompt="a (red:1.6) fox", loras=lora)
        assert with_lora != images["red up"]
        # Named after its words, as Core ML names the same request (it is given the words).
        assert result["images"][0]["fileName"].startswith("a_red_fox.")
    finally:
        worker.close()


@pytest.mark.diffusers
def test_sdxl_takes_its_loras_and_weights_and_refuses_clip_skip(
    tiny_sdxl: Path, tiny_loras: Path, tmp_path: Path
) -> None:
    worker, listed = worker_with_loras(tiny_sdxl, tiny_loras, tmp_path)
    try:
        assert [lora["name"] for lora in listed["loras"]] == ["xl-style"]
        assert (listed["promptWeights"], listed["clipSkip"]) == (True, False)
        base, _ = made(worker, "base", prompt="a red fox")
        assert (
            made(worker, "0", prompt="a red fox", loras=[{"name": "xl-style", "weight": 0}])[0]
            == base
        )
        assert made(worker, "1", prompt="a red fox", loras=[{"name": "xl-style"}])[0] != base
        assert made(worker, "weights of 1", prompt="(a red fox:1.0)")[0] == base
        assert made(worker, "weighted", prompt="a (red:1.6) fox")[0] != base
        refused = worker.call("generate", {**BASE, "clipSkip": 2})
        assert (refused["error"]["code"], refused["error"]["data"]["feature"]) == (
            -32001,
            "clipSkip",
        )
        refused = worker.call("generate", {**BASE, "loras": [{"name": "sd1/style"}]})
        assert (
            "'sd1/style' is a LoRA for models that read text 32 wide" in refused["error"]["message"]
        )
    finally:
        worker.close()


@pytest.mark.diffusers
def test_loras_and_weights_from_the_terminal(
    tiny_model: Path, tiny_loras: Path, tmp_path: Path
) -> None:
    """`studio-imagegen generate --lora NAME[:WEIGHT] --clip-skip N`, on the tiny model."""
    setup = DiffusersSetup(
        tmp_path, tiny_model, SYSTEMSCULPT_LOCAL_DIFFUSERS_LORAS_DIR=str(tiny_loras)
    )
    made = {}
    for name, extra in {
        "plain": ["a red fox"],
        "muted": ["a red fox", "--lora", "sd1/style:0"],
        "styled": ["a (red:1.3) fox", "--lora", "sd1/style:0.8", "--clip-skip", "2"],
    }.items():
        out = tmp_path / name
        command = ["generate", *extra, "--seed", "2", "--size", "64x64", "--steps", "3"]
        result = _client([*command, "--out", str(out)], setup.env, timeout=LONG_WAIT)
        assert result.returncode == 0, result.stderr
        with Image.open(result.stdout.split()[0]) as image:
            made[name] = image.convert("RGB").tobytes()
            record = json.loads(image.info["studio-imagegen"])["effective"]
    assert made["muted"] == made["plain"] != made["styled"]
    assert record["clipSkip"] == 2
    assert [(lora["name"], lora["weight"]) for lora in record["loras"]] == [("sd1/style", 0.8)]
    bad = _client(["generate", "a fox", "--lora", "style:strong"], setup.env)
    assert bad.returncode == 2 and "is not NAME[:WEIGHT]" in bad.stderr
    doctor = subprocess.run(
        [sys.executable, "-m", "worker", "doctor"],
        capture_output=True,
        text=True,
        env=worker_environment(setup.env),
        timeout=LONG_WAIT,
        check=False,
    )
    needle = f"diffusers/{tiny_model.name}:"
    listed = next(line for line in doctor.stdout.splitlines() if needle in line)
    assert listed.endswith("ready; inpaints (native); LoRAs: sd1/other, sd1/style"), listed


@pytest.mark.diffusers
def test_sd3_takes_its_loras_and_weighs_its_clip_embeddings(
    tiny_sd3: Path, tiny_loras: Path, tmp_path: Path
) -> None:
    worker, listed = worker_with_loras(tiny_sd3, tiny_loras, tmp_path)
    try:
        assert (listed["promptWeights"], listed["clipSkip"]) == (True, False)
        assert [lora["name"] for lora in listed["loras"]] == ["sd3-style"]
        assert (listed["loras"][0]["family"], listed["lorasReason"]) == ("sd3", "")
        base, result = made(worker, "base", prompt="a red fox")
        assert result["warnings"] == []
        host = worker.call("capabilities")["result"]["backend"]["modelHost"]["pid"]
        muted = [{"name": "sd3-style", "weight": 0}]
        assert made(worker, "0", prompt="a red fox", loras=muted)[0] == base
        styled, result = made(worker, "1", prompt="a red fox", loras=[{"name": "sd3-style"}])
        assert styled != base
        assert [lora["name"] for lora in result["metadata"]["loras"]] == ["sd3-style"]
        half = made(worker, "0.5", prompt="a red fox", loras=[{"name": "sd3-style", "weight": 0.5}])
        assert half[0] not in (base, styled)
        assert made(worker, "base again", prompt="a red fox")[0] == base
        assert worker.call("capabilities")["result"]["backend"]["modelHost"]["pid"] == host
        assert made(worker, "weights of 1", prompt="(a red fox:1.0)")[0] == base
        assert made(worker, "weighted", prompt="a (red:1.6) fox")[0] != base
        refused = worker.call("generate", {**BASE, "loras": [{"name": "sd1/style"}]})
        assert refused["error"]["code"] == -32602
        assert (
            "'sd1/style' is a LoRA for models that read text 32 wide"
            in (refused["error"]["message"])
        )
    finally:
        worker.close()
