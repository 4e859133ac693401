"""From one line of input to the JSON value to answer it with (or nothing).

parse -> check the envelope -> (per batch member) jsonrpcserver finds the method ->
the params are bound to the method's pydantic model -> the handler runs -> any exception
becomes a wire error in one place (`_as_wire_error`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import anyio
from jsonrpcserver import JsonRpcError, Success, async_dispatch_to_serializable
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from protocol.base import WireModel
from protocol.errors import ErrorCode, ErrorDetailData, FieldError, InvalidParamsData
from protocol.models import MAX_BATCH_MEMBERS
from worker.context import JsonId, RequestContext
from worker.errors import InvalidParams, WorkerError

logger = logging.getLogger(__name__)

Handler = Callable[[RequestContext, Any], Awaitable[WireModel | None]]
ContextFactory = Callable[[JsonId, bool], RequestContext]
JsonValue = Any

_ENVELOPE_KEYS = frozenset({"jsonrpc", "method", "params", "id"})
_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class Method:
    """A method of the protocol: the model its params bind to, and the handler."""

    params_model: type[WireModel]
    handler: Handler
    runs_as_notification: bool = True
    """False for a method whose only output is its result: sent without an id, nobody
    could receive it, so it is not run at all."""


def error_response(code: ErrorCode, message: str, data: WireModel, id_: JsonId) -> JsonValue:
    return {
        "jsonrpc": "2.0",
        "error": {"code": int(code), "message": message, "data": data.to_wire()},
        "id": id_,
    }


def parse_error(reason: str) -> JsonValue:
    message = f"Parse error: {reason}. Send one JSON-RPC request per line, UTF-8 encoded."
    return error_response(ErrorCode.PARSE_ERROR, message, ErrorDetailData(reason=reason), None)


def invalid_request(reason: str) -> JsonValue:
    message = f"Invalid request: {reason}."
    return error_response(ErrorCode.INVALID_REQUEST, message, ErrorDetailData(reason=reason), None)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class OversizedBatch:
    """A batch with more members than the limit; the rest of it was not read."""


def parse_line(text: str) -> JsonValue | OversizedBatch:
    """The line's JSON value. A batch is read member by member and given up at the first
    member over the limit, so that a line of a million tiny requests costs no more than
    `MAX_BATCH_MEMBERS` of them (in time and in memory); ValueError where it is not JSON."""
    start = _skip_space(text, 0)
    if not text.startswith("[", start):
        return _DECODER.decode(text)
    members: list[JsonValue] = []
    position = _skip_space(text, start + 1)
    if text.startswith("]", position):
        position += 1
    else:
        while True:
            member, position = _DECODER.raw_decode(text, position)
            members.append(member)
            if len(members) > MAX_BATCH_MEMBERS:
                return OversizedBatch()
            position = _skip_space(text, position)
            if text.startswith(",", position):
                position = _skip_space(text, position + 1)
            elif text.startswith("]", position):
                position += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
    if _skip_space(text, position) != len(text):
        raise json.JSONDecodeError("Extra data", text, position)
    return members


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def _is_valid_id(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # 1e400 parses to inf, which no JSON answer can carry
    return value is None or (isinstance(value, str | int) and not isinstance(value, bool))


def envelope_problem(value: JsonValue) -> str | None:
    """What makes this JSON value not a JSON-RPC 2.0 request or notification, if anything."""
    if not isinstance(value, dict):
        return f"expected a request object, got {type(value).__name__}"
    if value.get("jsonrpc") != "2.0":
        return 'the "jsonrpc" member must be exactly "2.0"'
    if not isinstance(value.get("method"), str):
        return 'the "method" member must be a string'
    if "params" in value and not isinstance(value["params"], dict | list):
        return 'the "params" member must be an object (or an array) when present'
    if "id" in value and not _is_valid_id(value["id"]):
        return 'the "id" member must be a string, a number or null'
    extra = sorted(set(value) - _ENVELOPE_KEYS)
    if extra:
        return f"unknown member(s) {', '.join(map(repr, extra))}"
    return None


class Dispatcher:
    """Answers lines of JSON-RPC 2.0 with the methods it was built with."""

    def __init__(self, methods: Mapping[str, Method]) -> None:
        self._methods = dict(methods)
        self._table = {name: self._adapter(name, method) for name, method in methods.items()}

    async def handle_line(self, line: bytes, make_context: ContextFactory) -> JsonValue | None:
        """The response (object, or array for a batch) to one line; None when none is due."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return parse_error(f"the line is not valid UTF-8 (byte {exc.start})")
        try:
            value = parse_line(text)
        except (ValueError, RecursionError) as exc:
            return parse_error(f"the line is not valid JSON ({exc})")
        if isinstance(value, OversizedBatch):
            return invalid_request(
                f"a batch of more than {MAX_BATCH_MEMBERS} requests (the limit, "
                "capabilities.limits.maxBatchMembers); send fewer at a time"
            )
        if not isinstance(value, list):
            return await self.handle_message(value, make_context)
        if not value:
            return invalid_request("an empty batch")
        responses: list[JsonValue | None] = [None] * len(value)

        async def answer(index: int, member: JsonValue) -> None:
            responses[index] = await self.handle_message(member, make_context)

        async with anyio.create_task_group() as group:
            for index, member in enumerate(value):
                group.start_soon(answer, index, member)
        answered = [response for response in responses if response is not None]
        return answered or None

    async def handle_message(
        self, value: JsonValue, make_context: ContextFactory
    ) -> JsonValue | None:
        problem = envelope_problem(value)
        if problem is not None:
            return invalid_request(problem)
        is_notification = "id" not in value
        context = make_context(value.get("id"), is_notification)
        try:
            response = await async_dispatch_to_serializable(
                cast(str, value),  # already parsed: the deserializer passes it through
                self._table,
                context=context,
                deserializer=_already_parsed,
                validator=_already_checked,
            )
        finally:
            context.mark_answered()
        if isinstance(response, dict) and "error" in response:
            _fill_method_not_found(response, value["method"], sorted(self._methods))
        return response

    def _adapter(self, name: str, method: Method) -> Callable[..., Awaitable[Any]]:
        # Everything comes through *args/**kwargs (jsonrpcserver passes the context first), so
        # no params name can clash with a parameter of this function.
        async def call(*args: Any, **kwargs: Any) -> Any:
            context, *positional = args
            if context.is_notification and not method.runs_as_notification:
                logger.warning(
                    "ignored %r sent as a notification (no id): nobody could receive its "
                    "result; send it as a request with an id",
                    name,
                )
                return Success(None)
            try:
                params = _bind(method.params_model, tuple(positional), kwargs)
                result = await method.handler(context, params)
            except Exception as exc:
                raise _as_wire_error(name, exc) from exc
            return Success(None if result is None else result.to_wire())

        return call


def _already_parsed(value: Any) -> Any:
    return value


def _already_checked(value: Any) -> Any:
    return value


def _bind(model: type[WireModel], args: tuple[Any, ...], kwargs: dict[str, Any]) -> WireModel:
    if args:
        raise InvalidParams(
            "Invalid params: params must be an object of named fields, not an array.",
            InvalidParamsData(
                errors=[FieldError(field="params", message="positional params are not supported")]
            ),
        )
    errors = [
        FieldError(field=field, message=UNPAIRED_SURROGATE) for field in _surrogates(kwargs, "")
    ]
    if not errors:
        try:
            return model.model_validate(kwargs, by_alias=True, by_name=False)
        except ValidationError as exc:
            errors = _field_errors(model, exc.errors(include_url=False))
    summary = "; ".join(f"{error.field}: {error.message}" for error in errors)
    raise InvalidParams(f"Invalid params: {summary}.", InvalidParamsData(errors=errors))


UNPAIRED_SURROGATE = (
    "contains an unpaired UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), "
    "which is not text; send the character itself or its whole pair"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_KINDS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_parsing_size": "a whole number within range",
    "int_from_float": "a whole number (without a fraction)",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "an array",
    "model_type": "an object",
    "dict_type": "an object",
    "model_attributes_type": "an object",
}
"""pydantic's error types, in the JSON words a host uses."""
_UNION_KINDS = {"int": "a number", "float": "a number", "str": "a string", "bool": "a boolean"}
"""What a union member pydantic names in an error's location stands for."""


def _surrogates(value: Any, path: str) -> list[str]:
    """The fields (dotted paths) whose strings cannot be encoded as UTF-8."""
    if isinstance(value, str):
        return [path or "params"] if _SURROGATE.search(value) else []
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            found += _surrogates(key, path) + _surrogates(item, f"{path}.{key}" if path else key)
        return found
    if isinstance(value, list):
        return [
            hit for index, item in enumerate(value) for hit in _surrogates(item, f"{path}.{index}")
        ]
    return []


def _field_errors(model: type[WireModel], details: list[ErrorDetails]) -> list[FieldError]:
    """One error a field, in the host's words: a union's alternatives become one message
    (`must be a string, a number or null`), pydantic's type errors say the JSON type."""
    errors: list[FieldError] = []
    unions: dict[str, list[str]] = {}
    for error in details:
        loc = error["loc"]
        if len(loc) > 1 and isinstance(loc[-1], str) and loc[-1] in _UNION_KINDS:
            field = ".".join(str(part) for part in loc[:-1])
            unions.setdefault(field, []).append(_UNION_KINDS[loc[-1]])
            continue
        errors.append(_field_error(model, error))
    for field, kinds in unions.items():
        alternatives = list(dict.fromkeys(kinds))
        if _optional(model, field):
            alternatives.append("null")
        spelled = ", ".join(alternatives[:-1]) + " or " + alternatives[-1]
        errors.append(FieldError(field=field, message=f"must be {spelled}"))
    return errors


def _optional(model: type[WireModel], field: str) -> bool:
    info = next((i for n, i in model.model_fields.items() if (i.alias or n) == field), None)
    return info is not None and not info.is_required() and info.default is None


def _field_error(model: type[WireModel], error: ErrorDetails) -> FieldError:
    field = ".".join(str(part) for part in error["loc"]) or "params"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in _JSON_KINDS:
        message = f"must be {_JSON_KINDS[error['type']]}"
    elif error["type"] == "missing":
        message = "is required"
    elif message.startswith("Input should "):  # "be 'fast' or 'high'", "be at least 1", ...
        message = "must " + message.removeprefix("Input should ")
    elif error["type"] == "extra_forbidden":
        known = [info.alias or name for name, info in model.model_fields.items()]
        if len(error["loc"]) > 1:
            message = "unknown field"
        elif known:
            message = f"unknown field; the known fields are {', '.join(known)}"
        else:
            message = "unknown field; this method takes no params"
    return FieldError(field=field, message=message)


def _as_wire_error(method: str, exc: Exception) -> JsonRpcError:
    """The single place where whatever a handler raised becomes a JSON-RPC error."""
    if isinstance(exc, WorkerError):
        return JsonRpcError(int(exc.code), exc.message, exc.data.to_wire())
    logger.error("unexpected error in %s", method, exc_info=exc)
    reason = f"unexpected {type(exc).__name__} in {method}; the worker's stderr has the details"
    return JsonRpcError(
        int(ErrorCode.INTERNAL_ERROR),
        "Internal error: " + reason + ".",
        ErrorDetailData(reason=reason).to_wire(),
    )


def _fill_method_not_found(response: dict[str, Any], method: str, known: list[str]) -> None:
    """Give jsonrpcserver's bare -32601 a message that names the method and the known ones."""
    error = response["error"]
    if error.get("code") != int(ErrorCode.METHOD_NOT_FOUND):
        return
    reason = f"no method {method!r}; the methods are {', '.join(known)}"
    error["message"] = f"Method not found: {reason}."
    error["data"] = ErrorDetailData(reason=reason).to_wire()
