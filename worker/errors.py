"""The one exception type that carries a wire error out of any layer of the worker."""

from __future__ import annotations

from protocol.base import WireModel
from protocol.errors import ErrorCode


class WorkerError(Exception):
    """An error the host should see: a code, a message naming cause and fix, and `data`."""

    def __init__(self, code: ErrorCode, message: str, data: WireModel) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"WorkerError({self.code.name}, {self.message!r})"
