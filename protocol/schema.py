"""JSON Schema of the whole wire contract, for hosts written in other languages.

`python -m protocol.schema --write` regenerates the checked-in `protocol/schema.json`;
a test fails when the two disagree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import JsonSchemaMode, models_json_schema

from protocol.base import WireModel
from protocol.errors import ERROR_DATA_MODELS, ErrorCode
from protocol.models import METHOD_MODELS
from protocol.version import PROTOCOL_VERSION

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def _name(model: type[WireModel]) -> str:
    return model.__name__


def build_schema() -> dict[str, Any]:
    """The schema of every params, result, notification and error `data` model."""
    # What the host sends is validated by the worker; what the worker sends is serialized.
    host_sends = {params for name, (params, _) in METHOD_MODELS.items() if name != "progress"}
    worker_sends = {result for _, result in METHOD_MODELS.values() if result is not None}
    worker_sends |= {METHOD_MODELS["progress"][0], *ERROR_DATA_MODELS.values()}
    inputs: list[tuple[type[WireModel], JsonSchemaMode]] = [
        (model, "validation") for model in sorted(host_sends, key=_name)
    ]
    inputs += [(model, "serialization") for model in sorted(worker_sends, key=_name)]
    _, schema = models_json_schema(inputs, ref_template="#/$defs/{model}")
    methods = {
        name: {
            "params": {"$ref": f"#/$defs/{params.__name__}"},
            "result": None if result is None else {"$ref": f"#/$defs/{result.__name__}"},
            "notification": result is None,
        }
        for name, (params, result) in METHOD_MODELS.items()
    }
    errors = {
        str(code.value): {
            "name": code.name,
            "description": code.description,
            "data": {"$ref": f"#/$defs/{ERROR_DATA_MODELS[code].__name__}"},
        }
        for code in ErrorCode
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "studio-imagegen-worker protocol",
        "description": "JSON-RPC 2.0, one JSON value per line on stdin and stdout.",
        "protocolVersion": PROTOCOL_VERSION,
        "methods": methods,
        "errors": errors,
        "$defs": schema["$defs"],
    }


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH.name}")
    args = parser.parse_args(argv)
    text = render_schema()
    if args.write:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
