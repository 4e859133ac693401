"""The checked-in JSON Schema is what a TypeScript host compiles against."""

from __future__ import annotations

import json

from protocol.errors import ERROR_DATA_MODELS, ErrorCode
from protocol.models import METHOD_MODELS
from protocol.schema import (
    FIELDS_BEGIN,
    FIELDS_END,
    README_PATH,
    SCHEMA_PATH,
    build_schema,
    render_field_reference,
)


def test_checked_in_schema_matches_the_models() -> None:
    checked_in = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert checked_in == build_schema(), (
        "protocol/schema.json is out of date: run `python -m protocol.schema --write`"
    )


def test_schema_covers_every_method_and_error_code() -> None:
    schema = build_schema()
    assert set(schema["methods"]) == set(METHOD_MODELS)
    assert set(schema["errors"]) == {str(code.value) for code in ErrorCode}
    for entry in schema["methods"].values():
        assert entry["params"]["$ref"].removeprefix("#/$defs/") in schema["$defs"]


def test_every_error_code_has_a_description_and_a_data_model() -> None:
    assert set(ERROR_DATA_MODELS) == set(ErrorCode)
    for code in ErrorCode:
        assert code.__doc__ and code.description == code.__doc__
    server_range = [c for c in ErrorCode if -32099 <= c <= -32000]
    assert [int(c) for c in server_range] == list(range(-32001, -32009, -1))
    assert int(ErrorCode.CANCELLED) == -32800


def test_wire_names_are_camel_case() -> None:
    properties = build_schema()["$defs"]["GenerateParams"]["properties"]
    assert {"runId", "aspectRatio", "inputImages", "stepCount", "outputDir", "schema"} <= set(
        properties
    )
    assert not any("_" in name for name in properties)


def test_protocol_readme_field_tables_match_the_models() -> None:
    text = README_PATH.read_text(encoding="utf-8")
    region = text[text.index(FIELDS_BEGIN) + len(FIELDS_BEGIN) : text.index(FIELDS_END)]
    assert region.strip() == render_field_reference().strip(), (
        "protocol/README.md field tables are out of date: run `python -m protocol.schema --write`"
    )


def test_protocol_readme_shows_every_method_and_a_real_answer_for_every_error() -> None:
    text = README_PATH.read_text(encoding="utf-8")
    for method in METHOD_MODELS:
        assert f"`{method}`" in text
    exchanges = text[text.index("<!-- exchanges:begin -->") :]
    answers = [line for line in exchanges.splitlines() if line.startswith("<- ")]
    shown = {code for code in ErrorCode if any(f'"code":{int(code)}' in a for a in answers)}
    # -32603 cannot be provoked from outside a healthy worker; the in-process tests show it.
    assert set(ErrorCode) - shown == {ErrorCode.INTERNAL_ERROR}
    for code in ErrorCode:
        assert f"| {int(code)} | {code.name} |" in text
    assert any('"method":"progress"' in a and '"phase":"queued"' in a for a in answers)


def test_each_error_class_carries_its_codes_data_model() -> None:
    """The classes handlers raise cover every code but the envelope's, and each one's
    `data` parameter is the model the wire contract gives that code."""
    import inspect

    from worker.errors import ERRORS_BY_CODE

    envelope = {
        ErrorCode.PARSE_ERROR,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.METHOD_NOT_FOUND,
        ErrorCode.INTERNAL_ERROR,
    }
    assert set(ERRORS_BY_CODE) == set(ErrorCode) - envelope
    for code, error in ERRORS_BY_CODE.items():
        annotation = inspect.signature(error.__init__).parameters["data"].annotation
        assert annotation == ERROR_DATA_MODELS[code].__name__, (code, annotation)
