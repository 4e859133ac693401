"""The pieces between a request and the sampler: command line, output parsing, images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from protocol.errors import ErrorCode
from protocol.models import GenerateParams
from tests.worker_clients import LINUX
from worker.backends.coreml.backend import CoreMLBackend
from worker.backends.coreml.sampler.command import SamplerCommand
from worker.backends.coreml.sampler.output_parser import (
    MAX_LINE_CHARS,
    ImageSaved,
    ImageWithheld,
    Loading,
    OtherLine,
    SamplerOutputParser,
    SamplingStarted,
    StepCompleted,
)
from worker.backends.registry import read_settings
from worker.errors import WorkerError
from worker.images import (
    check_png,
    safe_file_name,
    select_outputs,
    with_text_chunks,
    write_without_clobbering,
)
from worker.parameters import resolve_parameters


def _command(env: dict[str, str] | None = None, **request: Any) -> SamplerCommand:
    params = {
        "prompt": "--seed 1 a fox",
        "negativePrompt": "-blurry",
        "stepCount": 20,
        "count": 2,
        "seed": 42,
        "scheduler": "dpmpp",
        **request,
    }
    return SamplerCommand(
        binary=Path("/opt/sd/StableDiffusionSample"),
        resource_path=Path("/models/sd"),
        output_path=Path("/tmp/job/out"),
        parameters=resolve_parameters(
            GenerateParams.model_validate(params), read_settings(env or {})
        ),
    )


def test_argv_keeps_prompt_text_out_of_the_options() -> None:
    argv = _command().argv()
    assert argv == [
        "/opt/sd/StableDiffusionSample",
        "--resource-path=/models/sd",
        "--output-path=/tmp/job/out",
        "--compute-units=cpuAndNeuralEngine",
        "--step-count=20",
        "--image-count=2",
        "--seed=42",
        "--guidance-scale=7.5",
        "--scheduler=dpmpp",
        "--negative-prompt=-blurry",
        "--disable-safety",
        "--",
        "--seed 1 a fox",
    ]


def test_argv_flags_follow_the_settings() -> None:
    env = {
        "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY": "0",
        "SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY": "1",
    }
    argv = _command(env, negativePrompt="").argv()
    assert "--disable-safety" not in argv and "--reduce-memory" in argv
    assert not any(arg.startswith("--negative-prompt") for arg in argv)


def test_expected_total_steps_per_scheduler() -> None:
    settings = read_settings({"SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "20"})
    pndm = resolve_parameters(GenerateParams(prompt="x", scheduler="pndm"), settings)
    dpmpp = resolve_parameters(GenerateParams(prompt="x", scheduler="dpmpp"), settings)
    backend = CoreMLBackend(settings, LINUX)
    assert (backend.check(pndm).total_steps, backend.check(dpmpp).total_steps) == (21, 20)


def test_each_effective_value_says_where_it_came_from() -> None:
    settings = read_settings({"SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "14"})
    derived = resolve_parameters(GenerateParams(prompt="x", guidance_scale=3), settings)
    assert derived.sampling.step_count == 14 and derived.sampling.guidance_scale == 3.0
    assert derived.sources == {
        "stepCount": "environment",
        "guidanceScale": "request",
        "scheduler": "default",
        "computeUnits": "default",
        "disableSafety": "default",
        "reduceMemory": "default",
        "timeoutMs": "default",
        "seed": "derived",
    }
    chosen = resolve_parameters(GenerateParams(prompt="x", step_count=30, seed=5), settings)
    assert (chosen.sources["stepCount"], chosen.sources["seed"]) == ("request", "request")
    assert (chosen.sampling.step_count, chosen.seed) == (30, 5)


def _parse(*chunks: bytes) -> list[object]:
    parser = SamplerOutputParser()
    events: list[object] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + list(parser.finish())


def test_parser_reads_the_samplers_lines() -> None:
    step = b"\x1b[1A\x1b[KStep 0 of 21  [mean: 1.50, median: 1.25, last 1.75] step/sec\n"
    events = _parse(
        b"Loading resources and creating pipeline\n",
        b"(Note: This can take a while the first time using these resources)\n",
        b"Sampling ...\n",
        step,
        b"Saved a_fox.42.final.png\n",
    )
    assert events == [
        Loading("Loading resources and creating pipeline"),
        Loading("(Note: This can take a while the first time using these resources)"),
        SamplingStarted(),
        StepCompleted(completed=1, total=21, steps_per_second=1.25),
        ImageSaved("a_fox.42.final.png"),
    ]


@pytest.mark.parametrize(("ending", "saved"), [(" saved 2 images", 2), (" saved 1 image", 1)])
def test_a_step_line_that_also_saved_images_says_how_many(ending: str, saved: int) -> None:
    """main.swift: `log(" saved \\(saveCount) image\\(saveCount != 1 ? "s" : "")")`."""
    line = b"\x1b[1A\x1b[KStep 2 of 5  [mean: 1.00, median: 1.00, last 1.00] step/sec"
    events = _parse(line + ending.encode() + b"\n")
    assert events == [StepCompleted(completed=3, total=5, steps_per_second=1.0, saved=saved)]
    assert isinstance(events[0], StepCompleted) and events[0].index == 2


def test_parser_handles_lines_split_anywhere_and_crlf() -> None:
    line = b"\x1b[1A\x1b[KStep 4 of 5  [mean: 2.00, median: 2.00, last 2.00] step/sec\r\n"
    assert _parse(*[line[i : i + 1] for i in range(len(line))]) == [
        StepCompleted(completed=5, total=5, steps_per_second=2.0)
    ]


def test_parser_finds_safety_messages_without_their_own_newline() -> None:
    events = _parse(
        b"Image 0 failed safety check and was not saved",
        b"Image 1 failed safety check and was not savedSaved fox.2.7.final.png\n",
    )
    assert events == [ImageWithheld(0), ImageWithheld(1), ImageSaved("fox.2.7.final.png")]


def test_parser_survives_garbage() -> None:
    events = _parse(b"\xff\xfe\x1b[31mwarn\x07\n", b"\n\n", b"trailing without newline")
    assert events == [OtherLine("\ufffd\ufffdwarn\x07"), OtherLine("trailing without newline")]


def test_a_flood_without_newlines_keeps_only_a_bounded_tail() -> None:
    parser = SamplerOutputParser()
    chunk = b"x" * 65536
    for _ in range(320):  # 20 MiB, no newline
        assert parser.feed(chunk) == []
    assert parser.feed(b"y" * 10) == []
    step = b"\n\x1b[1A\x1b[KStep 0 of 3  [mean: 1.00, median: 1.00, last 1.00] step/sec\n"
    events = parser.feed(step)
    assert len(events) == 2
    flood, step_event = events
    assert isinstance(flood, OtherLine) and flood.text.endswith("x" * 100 + "y" * 10)
    assert len(flood.text) <= 2 * MAX_LINE_CHARS
    assert step_event == StepCompleted(completed=1, total=3, steps_per_second=1.0)


def test_a_flood_in_tiny_pieces_is_still_split_correctly() -> None:
    parser = SamplerOutputParser()
    events: list[object] = []
    for _ in range(3 * MAX_LINE_CHARS):
        events += parser.feed(b"z")
    message = b"Image 2 failed safety check and was not saved"
    events += parser.feed(message)
    events += parser.finish()
    flood, withheld = events
    assert isinstance(flood, OtherLine) and set(flood.text) == {"z"}
    # At least the limit is kept of the line's end, the message included.
    assert MAX_LINE_CHARS <= len(flood.text) + len(message) <= 2 * MAX_LINE_CHARS
    assert withheld == ImageWithheld(2)


def test_prompt_text_without_the_escape_is_not_a_step() -> None:
    assert _parse(b"Step 3 of 4  [mean: 1.00, median: 1.00, last 1.00] step/sec\n") == [
        OtherLine("Step 3 of 4  [mean: 1.00, median: 1.00, last 1.00] step/sec")
    ]


def _png(size: tuple[int, int] = (512, 512)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_select_outputs_prefers_final_pngs_sorted_by_name(tmp_path: Path) -> None:
    names = ["b.final.png", "a.final.png", "a.5.png", "notes.txt", "c.final.png", "a.7.3.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in select_outputs(tmp_path, 2, seed=7)] == ["a.final.png", "b.final.png"]
    for name in ["a.final.png", "b.final.png", "c.final.png"]:
        (tmp_path / name).unlink()
    # a.7.3.png is the intermediate image of step 3 for seed 7: never a result
    assert [p.name for p in select_outputs(tmp_path, 8, seed=7)] == ["a.5.png"]


def test_check_png_accepts_the_expected_size(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    path.write_bytes(_png())
    data, width, height = check_png(path, (512, 512))
    assert (width, height) == (512, 512) and data == path.read_bytes()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"GIF89a....", "is not a PNG file"),
        (b"\x89PNG\r\n\x1a\ntruncated", "is not a readable PNG"),
        (None, "is 256x256, expected 512x512"),
    ],
)
def test_check_png_refuses_bad_files(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content if content is not None else _png((256, 256)))
    with pytest.raises(WorkerError) as caught:
        check_png(path, (512, 512))
    assert caught.value.code is ErrorCode.OUTPUT_INVALID
    assert reason in caught.value.data.to_wire()["reason"]


def test_text_chunks_are_read_back_by_pillow_and_pixels_are_untouched() -> None:
    original = _png()
    annotated = with_text_chunks(original, [("parameters", "a fox\nSteps: 20"), ("j", "ünï 🦊")])
    with Image.open(io.BytesIO(annotated)) as image:
        image.load()
        assert image.info["parameters"] == "a fox\nSteps: 20"
        assert image.info["j"] == "ünï 🦊"
        with Image.open(io.BytesIO(original)) as plain:
            assert image.tobytes() == plain.tobytes()


def test_write_without_clobbering_picks_a_free_name(tmp_path: Path) -> None:
    first = write_without_clobbering(tmp_path, "fox.png", b"1")
    second = write_without_clobbering(tmp_path, "fox.png", b"2")
    assert (first.name, second.name) == ("fox.png", "fox-1.png")
    assert first.read_bytes() == b"1" and second.read_bytes() == b"2"


def test_safe_file_name() -> None:
    assert safe_file_name("a/b\nc\\d.png") == "a_b_c_d.png"
