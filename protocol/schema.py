"""JSON Schema of the whole wire contract, for hosts written in other languages.

`python -m protocol.schema --write` regenerates the checked-in `protocol/schema.json` and
the field tables of `protocol/README.md`; a test fails when either disagrees with the
models.
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
    worker_notifications = ("progress", "preview")
    host_sends = {
        params for name, (params, _) in METHOD_MODELS.items() if name not in worker_notifications
    }
    worker_sends = {result for _, result in METHOD_MODELS.values() if result is not None}
    worker_sends |= {METHOD_MODELS[name][0] for name in worker_notifications}
    worker_sends |= set(ERROR_DATA_MODELS.values())
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


README_PATH = Path(__file__).with_name("README.md")
FIELDS_BEGIN, FIELDS_END = "<!-- fields:begin -->", "<!-- fields:end -->"


def render_field_reference() -> str:
    """Markdown tables of every model's fields, generated from the schema."""
    schema = build_schema()
    parts = []
    for name, definition in sorted(schema["$defs"].items()):
        parts.append(f"#### {name}\n")
        if definition.get("description"):
            parts.append(" ".join(definition["description"].split()) + "\n")
        properties = definition.get("properties", {})
        if not properties:
            parts.append("No fields.\n")
            continue
        required = set(definition.get("required", []))
        parts.append("| field | type | required | default | notes |")
        parts.append("| --- | --- | --- | --- | --- |")
        for field, spec in properties.items():
            default = json.dumps(spec["default"]) if "default" in spec else ""
            notes = " ".join(spec.get("description", "").split()).replace("|", "\\|")
            parts.append(
                f"| `{field}` | {_type_of(spec)} | {'yes' if field in required else 'no'} "
                f"| {default and f'`{default}`'} | {notes} |"
            )
        parts.append("")
    return "\n".join(parts)


def _type_of(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in spec:
        return " or ".join(_type_of(option) for option in spec["anyOf"])
    if "enum" in spec:
        return " or ".join(f"`{json.dumps(value)}`" for value in spec["enum"])
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    kind = spec.get("type", "any")
    if kind == "array":
        return f"array of {_type_of(spec.get('items', {}))}"
    bounds = []
    if "minimum" in spec:
        bounds.append(f">= {spec['minimum']}")
    if "maximum" in spec:
        bounds.append(f"<= {spec['maximum']}")
    if "maxLength" in spec:
        bounds.append(f"<= {spec['maxLength']} chars")
    return str(kind) + (f" ({', '.join(bounds)})" if bounds else "")


def write_field_reference(readme: Path = README_PATH) -> None:
    text = readme.read_text(encoding="utf-8")
    start = text.index(FIELDS_BEGIN) + len(FIELDS_BEGIN)
    end = text.index(FIELDS_END)
    readme.write_text(
        text[:start] + "\n\n" + render_field_reference() + "\n" + text[end:], encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write {SCHEMA_PATH.name} and the field tables of {README_PATH.name}",
    )
    args = parser.parse_args(argv)
    text = render_schema()
    if args.write:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        write_field_reference()
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
