"""Turns what a job is doing into `progress` notifications for its request."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.models import PreviewParams, ProgressParams, ProgressPhase
from worker.context import RequestContext


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

    @property
    def total_steps(self) -> int:
        return self._total

    def expect(self, total_steps: int) -> None:
        """The step total, once the backend has planned the job."""
        self._total = total_steps

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
        fraction = min(self._completed / self._total, 1.0) if self._total else 0.0
        self._context.progress(
            ProgressParams(
                request_id=self._context.request_id,
                run_id=self._run_id,
                phase=phase,
                step=self._completed,
                total_steps=self._total,
                fraction=fraction,
                steps_per_second=steps_per_second,
                eta_ms=eta_ms,
                message=message,
                queue_position=queue_position,
            )
        )
