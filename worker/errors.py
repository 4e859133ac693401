"""The exceptions that carry a wire error out of any layer of the worker.

One class per error code, each taking the `data` model of its code, so the type checker
holds the pairing of code and data that `protocol.errors.ERROR_DATA_MODELS` states.
Dispatch turns any of them into the JSON-RPC error object (`dispatch._as_wire_error`).
"""

from __future__ import annotations

from typing import ClassVar

from protocol.base import WireModel
from protocol.errors import (
    BackendUnavailableData,
    ConfigInvalidData,
    ErrorCode,
    ErrorDetailData,
    InvalidParamsData,
    OutputInvalidData,
    OutputNotWrittenData,
    QueueFullData,
    SamplerFailedData,
    TimedOutData,
    UnsupportedFeatureData,
)


class WorkerError(Exception):
    """An error the host should see: its code, a message naming cause and fix, `data`."""

    code: ClassVar[ErrorCode]

    def __init__(self, message: str, data: WireModel) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidParams(WorkerError):
    code = ErrorCode.INVALID_PARAMS

    def __init__(self, message: str, data: InvalidParamsData) -> None:
        super().__init__(message, data)


class UnsupportedFeature(WorkerError):
    code = ErrorCode.UNSUPPORTED_FEATURE

    def __init__(self, message: str, data: UnsupportedFeatureData) -> None:
        super().__init__(message, data)


class BackendUnavailable(WorkerError):
    code = ErrorCode.BACKEND_UNAVAILABLE

    def __init__(self, message: str, data: BackendUnavailableData) -> None:
        super().__init__(message, data)


class SamplerFailed(WorkerError):
    code = ErrorCode.SAMPLER_FAILED

    def __init__(self, message: str, data: SamplerFailedData) -> None:
        super().__init__(message, data)


class TimedOut(WorkerError):
    code = ErrorCode.TIMED_OUT

    def __init__(self, message: str, data: TimedOutData) -> None:
        super().__init__(message, data)


class OutputInvalid(WorkerError):
    code = ErrorCode.OUTPUT_INVALID

    def __init__(self, message: str, data: OutputInvalidData) -> None:
        super().__init__(message, data)


class QueueFull(WorkerError):
    code = ErrorCode.QUEUE_FULL

    def __init__(self, message: str, data: QueueFullData) -> None:
        super().__init__(message, data)


class ConfigInvalid(WorkerError):
    code = ErrorCode.CONFIG_INVALID

    def __init__(self, message: str, data: ConfigInvalidData) -> None:
        super().__init__(message, data)


class OutputNotWritten(WorkerError):
    code = ErrorCode.OUTPUT_NOT_WRITTEN

    def __init__(self, message: str, data: OutputNotWrittenData) -> None:
        super().__init__(message, data)


class Cancelled(WorkerError):
    code = ErrorCode.CANCELLED

    def __init__(self, message: str, data: ErrorDetailData) -> None:
        super().__init__(message, data)


ERRORS_BY_CODE: dict[ErrorCode, type[WorkerError]] = {
    error.code: error for error in WorkerError.__subclasses__()
}
"""The class for each code a handler can answer with (the envelope's codes -32700,
-32600, -32601 and -32603 come from dispatch itself)."""
