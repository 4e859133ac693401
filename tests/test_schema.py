"""The checked-in JSON Schema is what a TypeScript host compiles against."""

from __future__ import annotations

import json

from protocol.errors import ERROR_DATA_MODELS, ErrorCode
from protocol.models import METHOD_MODELS
from protocol.schema import SCHEMA_PATH, build_schema


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
    assert [int(c) for c in server_range] == list(range(-32001, -32008, -1))
    assert int(ErrorCode.CANCELLED) == -32800


def test_wire_names_are_camel_case() -> None:
    properties = build_schema()["$defs"]["GenerateParams"]["properties"]
    assert {"runId", "aspectRatio", "inputImages", "stepCount", "outputDir", "schema"} <= set(
        properties
    )
    assert not any("_" in name for name in properties)
