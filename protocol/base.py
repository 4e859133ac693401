"""The base of every wire model: camelCase on the wire, snake_case in Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """A JSON object of the protocol. Unknown fields are rejected, names are camelCase."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        # Built on first use, so start-up pays only for the models a request needs.
        defer_build=True,
        # What the worker sends always carries every field, defaults included.
        json_schema_serialization_defaults_required=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """Plain JSON-able data, as it goes on the wire."""
        return self.model_dump(mode="json", by_alias=True)
