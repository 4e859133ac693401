"""What a method handler knows about the request it serves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.models import PreviewParams, ProgressParams

JsonId = str | int | float | None
"""A JSON-RPC id as the host sent it (null included)."""

Notify = Callable[[str, dict[str, Any]], None]
"""Queues a notification line for the host without waiting."""


@dataclass
class RequestContext:
    """One request's id, and a way to report progress that goes quiet once it is answered."""

    request_id: JsonId
    is_notification: bool
    notify: Notify
    answered: bool = field(default=False)

    def progress(self, params: ProgressParams) -> None:
        """Send a `progress` notification, unless the request was already answered."""
        if self.answered or self.is_notification:
            return
        self.notify("progress", params.to_wire())

    def preview(self, params: PreviewParams) -> None:
        """Send a `preview` notification, unless the request was already answered."""
        if self.answered or self.is_notification:
            return
        self.notify("preview", params.to_wire())

    def mark_answered(self) -> None:
        self.answered = True
