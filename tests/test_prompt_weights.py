"""Prompt weights, `(word:1.2)`, `(word)`, `[word]`, and clip skip: read as AUTOMATIC1111
reads them, weighed by the diffusers backend, removed with a warning where the model
cannot weigh words (Core ML, the mock), never passed on as literal brackets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.standin import StandIn, generate_once
from tests.test_controlnet import mock_call, pixels
from worker.prompt_weights import is_weighted, parse, plain

Message = dict[str, Any]
BASE = {"seed": 5, "width": 64, "height": 64}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat:1.5) on a mat", [("a ", 1.0), ("cat", 1.5), (" on a mat", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("((cat))", [("cat", pytest.approx(1.21))]),
        ("[cat]", [("cat", pytest.approx(1 / 1.1))]),
        ("(a (b:2) c)", [("a ", 1.1), ("b", pytest.approx(2.2)), (" c", 1.1)]),
        ("(cat: 0.5 )", [("cat", 0.5)]),
        (r"a \(cat\)", [("a (cat)", 1.0)]),
        ("time: 10:30", [("time: 10:30", 1.0)]),
        ("(open to the end", [("open to the end", 1.1)]),
        ("closed) only", [("closed) only", 1.0)]),
    ],
)
def test_the_syntax_reads_as_automatic1111_reads_it(text: str, fragments: list[Any]) -> None:
    assert parse(text) == fragments


def test_plain_text_is_not_weighted_and_escapes_are() -> None:
    assert not is_weighted("a cat, 10:30, 50% off")
    assert is_weighted("a (cat)")
    assert is_weighted(r"a \(cat\)")  # the brackets it means are not the text's
    assert plain("a (cat:1.5) on a [mat]") == "a cat on a mat"


async def test_the_mock_removes_weights_with_a_warning_and_draws_the_words() -> None:
    weighted = await mock_call("generate", {**BASE, "prompt": "a (fox:1.4) in [snow]"})
    words = await mock_call("generate", {**BASE, "prompt": "a fox in snow"})
    result = weighted["result"]
    [warning] = [w for w in result["warnings"] if "prompt weights" in w]
    assert "'a fox in snow'" in warning and "models[].promptWeights" in warning
    assert pixels(result["images"][0]) == pixels(words["result"]["images"][0])
    assert words["result"]["warnings"] == []
    listed = (await mock_call("capabilities"))["result"]["models"][0]
    assert (listed["promptWeights"], listed["clipSkip"]) == (False, False)


async def test_clip_skip_is_refused_where_the_model_reads_one_layer() -> None:
    refused = await mock_call("generate", {**BASE, "prompt": "a fox", "clipSkip": 2})
    assert refused["error"]["code"] == -32001
    assert refused["error"]["data"]["feature"] == "clipSkip"
    assert "SD 1.x/2.x on the diffusers backend" in refused["error"]["message"]
    same = await mock_call("generate", {**BASE, "prompt": "a fox", "clipSkip": 1})
    assert same["result"]["metadata"]["clipSkip"] is None
    out_of_range = await mock_call("generate", {**BASE, "prompt": "a fox", "clipSkip": 13})
    assert out_of_range["error"]["code"] == -32602


async def test_core_ml_gives_the_sampler_the_words_without_the_syntax(
    standin: StandIn, tmp_path: Path
) -> None:
    argv_file = tmp_path / "argv.jsonl"
    params = {"prompt": "a ((red)) fox, [blurry]", "negativePrompt": "(ugly:1.3)", "seed": 3}
    response, _ = await generate_once(standin, params, {"STANDIN_SD_ARGV_FILE": str(argv_file)})
    result = response["result"]
    assert any("prompt weights" in warning for warning in result["warnings"])
    [argv] = [json.loads(line) for line in argv_file.read_text().splitlines()]
    assert "a red fox, blurry" in argv
    assert "--negative-prompt=ugly" in argv
    assert not [arg for arg in argv if "(" in arg or "[" in arg]
    assert result["metadata"]["sources"]["seed"] == "request"
