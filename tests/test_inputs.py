"""What a request can carry, and how each bad input is named: paths with NUL, text that is
not Unicode, references of every image mode, MIME spellings, base64 as browsers write
it, controls given without what they control, and validation errors in the host's words.
A fuzzing pass holds the worker to one clear answer per request whatever comes."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from protocol.models import InputImage
from tests.worker_clients import in_process_worker, request
from worker.backends.registry import read_settings
from worker.image_modes import UnsupportedMode, to_rgb
from worker.reference import prepare_reference

MOCK = {"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock", "SYSTEMSCULPT_LOCAL_MOCK_STEP_MS": "0"}


async def _generate(params: dict[str, Any]) -> dict[str, Any]:
    async with in_process_worker(read_settings(MOCK)) as worker:
        return await worker.call("generate", params)


def _png(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _errors(response: dict[str, Any]) -> dict[str, str]:
    assert response["error"]["code"] == -32602, response
    return {e["field"]: e["message"] for e in response["error"]["data"]["errors"]}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (
            {"inputImages": [{"mimeType": "image/png", "stagedPath": "/tmp/a\x00b.png"}]},
            "stagedPath",
        ),
        ({"inputImages": [{"mimeType": "image/png", "path": "/tmp/\x00"}]}, "path"),
        ({"output": "path", "outputDir": "/tmp/\x00out"}, "outputDir"),
    ],
)
async def test_a_path_with_nul_is_invalid_params_naming_the_field(
    params: dict[str, Any], field: str
) -> None:
    errors = _errors(await _generate({"prompt": "fox", **params}))
    (name,) = errors
    assert name.endswith(field) and "NUL" in errors[name]


@pytest.mark.parametrize("field", ["prompt", "runId", "negativePrompt", "aspectRatio"])
async def test_text_that_is_not_unicode_is_invalid_params_and_serving_goes_on(field: str) -> None:
    params = {"prompt": "fox", field: "a \ud800 fox"}
    async with in_process_worker(read_settings(MOCK)) as worker:
        errors = _errors(await worker.call("generate", params))
        assert field in errors and "unpaired UTF-16 surrogate" in errors[field]
        assert "result" in await worker.call("generate", {"prompt": "fox"}, id_=2)


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"width": 1e308, "height": 512}, "width", "must be a whole number within range"),
        ({"seed": 1.5}, "seed", "must be a whole number (without a fraction)"),
        ({"localOptions": 5}, "localOptions", "must be an object"),
        ({"prompt": 5}, "prompt", "must be a string"),
        ({"inputImages": [5]}, "inputImages.0", "must be an object"),
    ],
)
async def test_validation_errors_name_the_field_and_what_it_takes(
    params: dict[str, Any], field: str, message: str
) -> None:
    errors = _errors(await _generate({"prompt": "fox", **params}))
    assert errors[field] == message
    assert not any("Input should" in text or "Unable to parse" in text for text in errors.values())


async def test_a_union_field_is_one_error_in_json_words() -> None:
    async with in_process_worker(read_settings(MOCK)) as worker:
        response = await worker.call("cancel", {"requestId": True})
    assert _errors(response) == {"requestId": "must be a number, a string or null"}


# --- references of every mode ----------------------------------------------------


def _uniform(mode: str, value: Any) -> Image.Image:
    return Image.new(mode, (40, 30), value)


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (40, 30), 0)
    image.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    return _png(image, transparency=0)  # index 0, blue, is transparent: white shows


CASES: list[tuple[str, bytes, str, tuple[int, int, int]]] = [
    ("16-bit grey", _png(_uniform("I;16", 32896)), "image/png", (128, 128, 128)),
    ("bilevel", _png(_uniform("1", 1)), "image/png", (255, 255, 255)),
    ("grey", _png(_uniform("L", 77)), "image/png", (77, 77, 77)),
    ("grey with alpha", _png(_uniform("LA", (0, 0))), "image/png", (255, 255, 255)),
    ("palette with transparency", _palette_with_transparency(), "image/png", (255, 255, 255)),
    ("RGBA half transparent", _png(_uniform("RGBA", (0, 0, 0, 128))), "image/png", (127, 127, 127)),
    ("RGB", _png(_uniform("RGB", (10, 200, 30))), "image/png", (10, 200, 30)),
]


def _jpeg(mode: str, value: Any) -> bytes:
    buffer = io.BytesIO()
    _uniform(mode, value).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _webp_rgba() -> bytes:
    buffer = io.BytesIO()
    _uniform("RGBA", (200, 0, 0, 0)).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


CASES += [
    ("JPEG grey", _jpeg("L", 90), "image/jpeg", (90, 90, 90)),
    ("JPEG CMYK", _jpeg("CMYK", (0, 0, 0, 0)), "image/jpeg", (255, 255, 255)),
    ("WebP transparent", _webp_rgba(), "image/webp", (255, 255, 255)),
]


@pytest.mark.parametrize(
    ("data", "mime", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_every_image_mode_is_converted_faithfully(
    data: bytes, mime: str, expected: tuple[int, int, int]
) -> None:
    item = InputImage(mime_type=mime, base64=base64.b64encode(data).decode())
    prepared = prepare_reference(item, 0, (64, 64))
    with Image.open(io.BytesIO(prepared.png)) as image:
        assert image.mode == "RGB" and image.size == (64, 64)
        pixel = image.getpixel((32, 32))
    assert isinstance(pixel, tuple)
    assert all(abs(got - want) <= 2 for got, want in zip(pixel, expected, strict=True)), pixel


async def test_a_16_bit_reference_reaches_the_backend_as_grey_not_white() -> None:
    reference = base64.b64encode(_png(_uniform("I;16", 16448))).decode()  # a quarter grey
    params = {
        "prompt": "fox",
        "seed": 1,
        "inputImages": [{"mimeType": "image/png", "base64": reference}],
        "strength": 0.1,  # the mock keeps 90 % of the reference
    }
    (image,) = (await _generate(params))["result"]["images"]
    with Image.open(io.BytesIO(base64.b64decode(image["base64"]))) as result:
        grey = result.convert("L").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    assert isinstance(grey, int) and grey < 128, "washed out to white"


def test_16_bit_grey_as_older_pillow_opens_it_is_scaled_too() -> None:
    """Pillow before 10 opened a 16-bit grey PNG as mode I (32-bit integers)."""
    assert to_rgb(Image.new("I", (4, 4), 32896), (0, 0, 0)).getpixel((0, 0)) == (128, 128, 128)


def test_a_float_image_is_refused_with_the_reason() -> None:
    """No accepted format opens as floats today; the converter says why it takes none."""
    with pytest.raises(UnsupportedMode, match="floating-point"):
        to_rgb(Image.new("F", (4, 4), 0.5), (255, 255, 255))


# --- MIME types and base64 as hosts write them --------------------------------------

RED = _png(_uniform("RGB", (255, 0, 0)))


@pytest.mark.parametrize(
    ("mime", "data"),
    [
        ("IMAGE/PNG", RED),
        ("image/png; charset=binary", RED),
        ("image/jpg", _jpeg("RGB", (255, 0, 0))),
        ("image/x-png", RED),
    ],
)
async def test_common_mime_spellings_are_accepted(mime: str, data: bytes) -> None:
    reference = {"mimeType": mime, "base64": base64.b64encode(data).decode()}
    response = await _generate({"prompt": "fox", "inputImages": [reference]})
    assert response["result"]["metadata"]["usedReferenceImage"] is True


@pytest.mark.parametrize(
    "encoded",
    [
        base64.encodebytes(RED).decode(),  # line breaks every 76 characters
        "data:image/png;base64," + base64.b64encode(RED).decode(),
        base64.urlsafe_b64encode(RED).decode().rstrip("="),
        "  " + base64.b64encode(RED).decode().replace("A", "A\r\n", 3) + "\n",
    ],
    ids=["line breaks", "data URL", "URL-safe without padding", "spaces and CRLF"],
)
async def test_base64_as_browsers_and_node_write_it_is_accepted(encoded: str) -> None:
    reference = {"mimeType": "image/png", "base64": encoded}
    response = await _generate({"prompt": "fox", "inputImages": [reference]})
    assert "result" in response, response


@pytest.mark.parametrize(
    ("encoded", "said"),
    [
        ("iVBORw0KGgo!AAAA", "'!' at position 11"),
        ("iVBORw0KG=go", "'=' may only pad its end"),
        ("iVBORw0KG", "9 digits make no whole bytes"),
        ("data:image/png,abc", "without ;base64"),
    ],
)
async def test_what_is_not_base64_is_named_exactly(encoded: str, said: str) -> None:
    reference = {"mimeType": "image/png", "base64": encoded}
    errors = _errors(await _generate({"prompt": "fox", "inputImages": [reference]}))
    assert said in errors["inputImages.0.base64"]


async def test_strength_without_a_reference_is_a_warning() -> None:
    response = await _generate({"prompt": "fox", "strength": 0.4, "referenceInfluence": "subtle"})
    (warning,) = response["result"]["warnings"]
    assert "strength and referenceInfluence apply only to a reference image" in warning
    assert response["result"]["metadata"]["strength"] is None


# --- fuzzing ------------------------------------------------------------------------

_WORDS = st.sampled_from(
    [
        "",
        "fox",
        "\x00",
        "\ud800",
        "/tmp",
        "/tmp/\x00",
        "1:1",
        "16:9",
        "0:0",
        "image/png",
        "IMAGE/JPG",
        "data:image/png;base64,AAAA",
        "path",
        "base64",
        "é" * 80,
        "../x",
    ]
)
_NUMBERS = st.sampled_from([0, -1, 1, 2, 7, 64, 2**31, 2**64, 0.5, 1.5, -0.0, 1e308, 1e-300])
_LEAVES = st.none() | st.booleans() | _WORDS | _NUMBERS
_JSON = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["mimeType", "base64", "path", "stagedPath", "quality", "x"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=6,
)
_FIELDS = st.sampled_from(
    [
        "prompt",
        "count",
        "runId",
        "aspectRatio",
        "width",
        "height",
        "inputImages",
        "strength",
        "referenceInfluence",
        "negativePrompt",
        "stepCount",
        "guidanceScale",
        "quality",
        "qualityPreset",
        "localOptions",
        "scheduler",
        "computeUnits",
        "seed",
        "timeoutMs",
        "previewEvery",
        "output",
        "outputDir",
        "schema",
    ]
)


@settings(
    max_examples=300,
    database=None,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.dictionaries(_FIELDS, _JSON, max_size=5), st.booleans())
def test_fuzzed_params_always_get_one_clear_answer(fields: dict[str, Any], prompt: bool) -> None:
    import anyio

    params = {"prompt": "fox", **fields} if prompt else fields
    params.setdefault("stepCount", 1)

    async def exchange() -> list[Any]:
        async with in_process_worker(read_settings(MOCK)) as worker:
            await worker.send(request("generate", params, "g"))
            await worker.send(request("cancel", fields, "c"))
            answers: list[Any] = []
            while len(answers) < 2:
                message = await worker.receive()
                if "method" not in message:
                    answers.append(message)
            return answers

    for answer in anyio.run(exchange):
        error = answer.get("error")
        assert error is None or error["code"] not in (-32603,), error
        if error is not None and error["code"] == -32602:
            assert all(e["field"] and e["message"] for e in error["data"]["errors"])
            assert "Input should" not in error["message"], error["message"]
