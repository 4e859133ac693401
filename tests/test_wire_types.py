"""The params models accept exactly what `schema.json` accepts: JSON's types, not
Python's coercions. Checked both ways over the same values, field by field."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError

from protocol.base import WireModel
from protocol.models import CancelParams, CancelRequestParams, GenerateParams
from protocol.schema import build_schema

VALUES: list[Any] = [
    True,
    False,
    None,
    0,
    1,
    3,
    3.0,
    3.5,
    -1,
    2**32,
    1e400,  # what json.loads makes of 1e400
    "3",
    "7.5",
    "x",
    "pndm",
    "1:1",
    [],
    [1],
    [{"stagedPath": "/tmp/a.png"}],
    [{"sizeBytes": "12"}],
    {},
    {"a": 1},
]

CASES: list[tuple[type[WireModel], dict[str, Any], list[str]]] = [
    (
        GenerateParams,
        {"prompt": "x"},
        [
            "prompt",
            "count",
            "runId",
            "aspectRatio",
            "inputImages",
            "negativePrompt",
            "stepCount",
            "guidanceScale",
            "scheduler",
            "computeUnits",
            "seed",
            "timeoutMs",
        ],
    ),
    (CancelParams, {}, ["requestId", "runId"]),
    (CancelRequestParams, {}, ["id"]),
]


def _schema_accepts(model: type[WireModel], params: dict[str, Any]) -> bool:
    schema = build_schema()
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"#/$defs/{model.__name__}", "$defs": schema["$defs"]}
    )
    return validator.is_valid(params)


def _model_accepts(model: type[WireModel], params: dict[str, Any]) -> bool:
    try:
        model.model_validate(params, by_alias=True, by_name=False)
    except ValidationError:
        return False
    return True


def _schema_can_say(model: type[WireModel], field: str, value: Any) -> bool:
    """What JSON Schema cannot state: exactly one of requestId and runId, and that an id
    beyond a double's range (1e400) names no request (the envelope refuses such ids too).
    A prompt that trims to nothing is the third; no value above is one."""
    if model is CancelParams and field == "runId" and value is None:
        return False
    return not (field in ("requestId", "id") and value == 1e400)


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (model, field, value)
        for model, _, fields in CASES
        for field in fields
        for value in VALUES
        if _schema_can_say(model, field, value)
    ],
    ids=lambda item: item.__name__ if isinstance(item, type) else repr(item)[:20],
)
def test_the_schema_and_the_model_agree(model: type[WireModel], field: str, value: Any) -> None:
    base = next(base for case, base, _ in CASES if case is model)
    params = {**base, field: value}
    if model is CancelParams and field == "runId":
        params = {"runId": value}
    assert _schema_accepts(model, params) == _model_accepts(model, params), params


@pytest.mark.parametrize(
    "params",
    [
        {"prompt": "x", "stepCount": True, "seed": False, "guidanceScale": True},
        {"prompt": "x", "stepCount": "3"},
        {"prompt": "x", "seed": "7"},
        {"prompt": "x", "count": 2.5},
        {"prompt": 5},
    ],
)
def test_coercible_values_are_refused(params: dict[str, Any]) -> None:
    assert not _model_accepts(GenerateParams, params)


def test_integral_floats_count_as_integers_as_the_schema_says() -> None:
    params = GenerateParams.model_validate({"prompt": "x", "stepCount": 3.0, "count": 2.0})
    assert (params.step_count, params.count) == (3, 2)
    assert _schema_accepts(GenerateParams, {"prompt": "x", "stepCount": 3.0})
