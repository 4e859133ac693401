"""Error codes of the wire contract, and the shape of each code's `data`."""

from __future__ import annotations

from enum import IntEnum

from protocol.base import WireModel


class ErrorCode(IntEnum):
    """Every error code the worker answers with. Each member's docstring says when."""

    _description_: str

    def __new__(cls, value: int, description: str) -> ErrorCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member._description_ = description
        member.__doc__ = description
        return member

    @property
    def description(self) -> str:
        return self._description_

    @classmethod
    def from_code(cls, code: object) -> ErrorCode | None:
        """The member for a code read off the wire, or None for a code this protocol lacks."""
        return next((member for member in cls if member.value == code), None)

    PARSE_ERROR = (-32700, "The line is not valid UTF-8 or not valid JSON.")
    INVALID_REQUEST = (
        -32600,
        "The JSON value is not a JSON-RPC 2.0 request (or the line is over the size limit).",
    )
    METHOD_NOT_FOUND = (-32601, "No method of that name; see `capabilities`.")
    INVALID_PARAMS = (
        -32602,
        "The params do not fit the method (positional params, unknown or invalid fields).",
    )
    INTERNAL_ERROR = (-32603, "An unexpected fault in the worker; details are on its stderr.")
    UNSUPPORTED_FEATURE = (
        -32001,
        "The request asks for a control the backend does not support; nothing was run.",
    )
    BACKEND_UNAVAILABLE = (
        -32002,
        "The sampler binary or the model resources are missing, or the platform cannot run them.",
    )
    SAMPLER_FAILED = (-32003, "The sampler exited with a non-zero status or died by a signal.")
    TIMED_OUT = (-32004, "The sampler ran longer than the timeout and was stopped.")
    OUTPUT_INVALID = (
        -32005,
        "The sampler produced no image, an unreadable PNG or one of the wrong size.",
    )
    QUEUE_FULL = (-32006, "Too many jobs are waiting; retry when some have finished.")
    CONFIG_INVALID = (
        -32007,
        "A SYSTEMSCULPT_LOCAL_* environment variable has a value that cannot be used.",
    )
    OUTPUT_NOT_WRITTEN = (
        -32008,
        "The images were made but could not be written to `outputDir` (disk full, folder "
        "removed, ...); none of them is left there.",
    )
    CANCELLED = (-32800, "The request was cancelled (the LSP's RequestCancelled code).")


class FieldError(WireModel):
    """One problem with one field of the params."""

    field: str
    message: str


class InvalidParamsData(WireModel):
    """`data` of -32602."""

    errors: list[FieldError]


class UnsupportedFeatureData(WireModel):
    """`data` of -32001."""

    feature: str
    supported: list[str]


class BackendUnavailableData(WireModel):
    """`data` of -32002."""

    backend: str
    reason: str
    missing: list[str]
    install_hint: str


class SamplerFailedData(WireModel):
    """`data` of -32003. `stderr` is the tail of the sampler's stderr (at most 2,000 chars)."""

    exit_code: int | None
    signal: str | None
    stderr: str


class TimedOutData(WireModel):
    """`data` of -32004."""

    timeout_ms: int


class OutputInvalidData(WireModel):
    """`data` of -32005."""

    reason: str


class QueueFullData(WireModel):
    """`data` of -32006."""

    max_queue: int


class ConfigInvalidData(WireModel):
    """`data` of -32007, and one entry of `capabilities.configErrors`."""

    variable: str
    value: str
    reason: str

    def describe(self) -> str:
        """`VARIABLE='value' reason`: how every bad setting is reported."""
        return f"{self.variable}={self.value!r} {self.reason}"


class OutputNotWrittenData(WireModel):
    """`data` of -32008: the file that could not be written and the system's reason."""

    path: str
    reason: str


class ErrorDetailData(WireModel):
    """`data` of -32700, -32600, -32601, -32603 and -32800: what happened, in words."""

    reason: str


ERROR_DATA_MODELS: dict[ErrorCode, type[WireModel]] = {
    ErrorCode.PARSE_ERROR: ErrorDetailData,
    ErrorCode.INVALID_REQUEST: ErrorDetailData,
    ErrorCode.METHOD_NOT_FOUND: ErrorDetailData,
    ErrorCode.INVALID_PARAMS: InvalidParamsData,
    ErrorCode.INTERNAL_ERROR: ErrorDetailData,
    ErrorCode.UNSUPPORTED_FEATURE: UnsupportedFeatureData,
    ErrorCode.BACKEND_UNAVAILABLE: BackendUnavailableData,
    ErrorCode.SAMPLER_FAILED: SamplerFailedData,
    ErrorCode.TIMED_OUT: TimedOutData,
    ErrorCode.OUTPUT_INVALID: OutputInvalidData,
    ErrorCode.QUEUE_FULL: QueueFullData,
    ErrorCode.CONFIG_INVALID: ConfigInvalidData,
    ErrorCode.OUTPUT_NOT_WRITTEN: OutputNotWrittenData,
    ErrorCode.CANCELLED: ErrorDetailData,
}
"""The model of `data` for each code: the schema export and the tests read this table."""
