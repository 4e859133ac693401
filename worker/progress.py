"""Turns what a job is doing into `progress` notifications for its request."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from protocol.models import PreviewParams, ProgressParams, ProgressPhase
from worker.context import RequestContext
from worker.text import terminal_safe

HEARTBEAT_SECONDS = 5.0
"""With no news for this long (a slow step, a long load), the last notification is sent
again with the time it has been going: slow is then told apart from stuck."""


@dataclass(frozen=True)
class Thumbnail:
    """A preview image, inline (`base64`) or written beside the outputs (`path`)."""

    width: int
    height: int
    base64: str | None = None
    path: str | None = None


class ProgressReporter:
    """One per job. At most one notification per sampler line; quiet once answered."""

    def __init__(self, context: RequestContext, run_id: str, expected_total_steps: int) -> None:
        self._context = context
        self._run_id = run_id
        self._total = expected_total_steps
        self._completed = 0
        self._taken = time.monotonic()
        self._last: ProgressParams | None = None
        self._last_news = self._taken
        """When the last notification with news (not a heartbeat) went out."""
        self._advice: list[str] = []
        self.preview_paths: list[Path] = []
        """The files its previews were written to (output `path`), for a delivery that
        fails to take back."""

    @property
    def total_steps(self) -> int:
        return self._total

    def expect(self, total_steps: int) -> None:
        """The step total, once the backend has planned the job."""
        self._total = total_steps

    def advise(self, text: str) -> None:
        """Say `text` once, as the job starts (before its own first notification)."""
        self._advice.append(text)

    async def keep_alive(self, interval: float | None = None) -> None:
        """Until cancelled: after `interval` seconds without news, the last notification
        again, saying how long it has been going."""
        interval = interval if interval is not None else HEARTBEAT_SECONDS
        while True:
            await anyio.sleep(max(self._last_news + interval - time.monotonic(), 0.01))
            since = time.monotonic() - self._last_news
            last = self._last
            if last is None or since < interval:
                continue
            eta = max(last.eta_ms - round(since * 1000), 0) if last.eta_ms is not None else None
            self._emit(
                replace_params(last, message=f"{last.message} ({since:.0f} s so far)", eta_ms=eta),
                news=False,
            )

    def queued(self, position: int) -> None:
        self._send(
            "queued",
            f"Waiting for the sampler: position {position} in the queue",
            queue_position=position,
        )

    def loading(self, message: str) -> None:
        self._send("loading", message)

    def sampling(self, completed: int, total: int, steps_per_second: float | None) -> None:
        self._completed, self._total = completed, total
        eta_ms = None
        if steps_per_second:
            eta_ms = round(max(total - completed, 0) / steps_per_second * 1000)
        self._send(
            "sampling",
            f"Step {completed} of {total}" if completed else "Sampling",
            steps_per_second=steps_per_second,
            eta_ms=eta_ms,
        )

    def preview(self, step: int, index: int, thumbnail: Thumbnail) -> None:
        """A thumbnail of image `index` after `step` steps; quiet once answered."""
        if thumbnail.path is not None:
            self.preview_paths.append(Path(thumbnail.path))
        self._context.preview(
            PreviewParams(
                request_id=self._context.request_id,
                run_id=self._run_id,
                step=step,
                total_steps=self._total,
                index=index,
                width=thumbnail.width,
                height=thumbnail.height,
                base64=thumbnail.base64,
                path=thumbnail.path,
            )
        )

    def saving(self, message: str) -> None:
        self._completed = self._total
        self._send("saving", message)

    def _send(
        self,
        phase: ProgressPhase,
        message: str,
        *,
        steps_per_second: float | None = None,
        eta_ms: int | None = None,
        queue_position: int | None = None,
    ) -> None:
        if self._context.answered or self._context.is_notification:
            return
        if phase != "queued":
            advice, self._advice = self._advice, []
            for text in advice:
                self._send("loading", text)
        fraction = min(self._completed / self._total, 1.0) if self._total else 0.0
        self._emit(
            ProgressParams(
                request_id=self._context.request_id,
                run_id=self._run_id,
                phase=phase,
                step=self._completed,
                total_steps=self._total,
                fraction=fraction,
                steps_per_second=steps_per_second,
                eta_ms=eta_ms,
                message=terminal_safe(message),
                elapsed_ms=0,
                queue_position=queue_position,
            ),
            news=True,
        )

    def _emit(self, params: ProgressParams, news: bool) -> None:
        now = time.monotonic()
        params = replace_params(params, elapsed_ms=round((now - self._taken) * 1000))
        if news:
            self._last, self._last_news = params, now
        self._context.progress(params)


def replace_params(params: ProgressParams, **changes: object) -> ProgressParams:
    return params.model_copy(update=changes)
