"""Admission, order and cancellation of `generate` jobs.

The sampler is one heavy resource (one Neural Engine, gigabytes of model), so at most
`max_concurrency` jobs run; the rest wait in arrival order in a bounded queue. Arrival is
when the request came, not when its preparation (decoding an image, say) ended: a job
ready early waits until every earlier request has been queued or has failed. A job that
is cancelled, queued or running, is answered -32800 exactly once and never also with a
result: the decision is taken in one place, `JobQueue.run`, without an await between the
check and the answer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, TypeVar

import anyio

from protocol.errors import ErrorDetailData, QueueFullData
from worker.context import JsonId
from worker.errors import Cancelled, QueueFull, WorkerError
from worker.settings import ENV_MAX_QUEUE

if TYPE_CHECKING:  # the queue only calls it; loading it waits for the first generate
    from worker.progress import ProgressReporter

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Job:
    request_id: JsonId
    run_id: str
    progress: ProgressReporter
    turn: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None
    cancel_reason: str | None = None
    finished: bool = False
    position: int | None = None
    """1-based place in the queue while waiting; reported whenever it changes."""
    ticket: int = 0
    """Its place in arrival order, given when the request arrives."""
    admitted: anyio.Event = field(default_factory=anyio.Event)
    """Set once it is running, waiting in the queue, or gone: later arrivals wait for it."""

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None


class JobQueue:
    """Owns the jobs: which run, which wait and in what order, and the one decision per
    job between its result and -32800."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._running: list[Job] = []
        self._waiting: deque[Job] = deque()
        self._arrived: list[Job] = []
        """Every unfinished job from its request's arrival, in arrival order."""
        self._tickets = count(1)
        self._closed = False

    @contextmanager
    def arrival(self, job: Job) -> Iterator[None]:
        """From a request's arrival to its answer: the job takes its place in arrival
        order, a cancel finds it at any stage, and when the block ends, however it ends,
        later arrivals no longer wait for it."""
        job.ticket = next(self._tickets)
        self._arrived.append(job)
        try:
            yield
        finally:
            self._arrived.remove(job)
            job.admitted.set()

    @contextmanager
    def preparing(self, job: Job) -> Iterator[None]:
        """While a request is still checked and prepared, before `run` (inside its
        `arrival`): a cancel stops the preparation, and the block ends in -32800."""
        try:
            with anyio.CancelScope() as scope:
                job.scope = scope
                if self._closed:
                    self._cancel(job, "the worker is shutting down")
                yield
            if job.cancelled:
                raise _cancelled(job, job.cancel_reason)
        finally:
            job.scope = None

    async def run(self, job: Job, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` for `job` when its turn comes; -32800 if it is cancelled first or
        meanwhile, -32006 if the queue is full."""
        await self._wait_for_earlier_arrivals(job)
        if self._closed:
            raise _cancelled(job, "the worker is shutting down")
        if job.cancelled:  # while its request was being prepared
            raise _cancelled(job, job.cancel_reason)
        job.admitted.set()  # whatever follows, this job has taken its place
        if len(self._running) < self._max_concurrency and not self._waiting:
            self._running.append(job)
        elif len(self._waiting) >= self._max_queue:
            raise QueueFull(
                f"Queue full: {len(self._waiting)} jobs are already waiting (the limit is "
                f"{self._max_queue}, {ENV_MAX_QUEUE}). Retry when some have finished.",
                QueueFullData(max_queue=self._max_queue),
            )
        else:
            self._waiting.append(job)
            self._report_positions()
        try:
            if job in self._waiting:
                await job.turn.wait()
            if job.cancelled:
                raise _cancelled(job, job.cancel_reason)
            with anyio.CancelScope() as scope:
                job.scope = scope
                if job.cancelled:  # cancelled between its turn and this scope
                    scope.cancel()
                result = await work()
            if job.cancelled:
                raise _cancelled(job, job.cancel_reason)
            return result
        finally:
            job.finished = True
            self._release(job)

    async def _wait_for_earlier_arrivals(self, job: Job) -> None:
        """Until every request that arrived before this one is queued, running or gone;
        a cancel meanwhile ends the wait at once."""
        earlier = [other for other in self._arrived if other.ticket < job.ticket]
        if not earlier:
            return
        with anyio.CancelScope() as scope:
            job.scope = scope
            if job.cancelled:
                scope.cancel()
            for other in earlier:
                await other.admitted.wait()
        job.scope = None

    def cancel_request(self, request_id: JsonId) -> list[JsonId]:
        """Cancel the unfinished job of this request id (of any JSON type, null included)."""
        return self._cancel_where(lambda job: same_id(job.request_id, request_id))

    def cancel_run(self, run_id: str) -> list[JsonId]:
        """Cancel every unfinished job of this Studio run."""
        return self._cancel_where(lambda job: job.run_id == run_id)

    def _cancel_where(self, matches: Callable[[Job], bool]) -> list[JsonId]:
        """The ids of the jobs this cancels; one already being cancelled (or finished) is
        not reported again."""
        jobs = [
            job for job in self._arrived if matches(job) and not job.cancelled and not job.finished
        ]
        for job in jobs:
            self._cancel(job, "cancelled by the host")
        return [job.request_id for job in jobs]

    def close(self) -> None:
        """Refuse new jobs and cancel every job that is waiting or running."""
        self._closed = True
        for job in list(self._arrived):
            self._cancel(job, "the worker is shutting down")

    def _cancel(self, job: Job, reason: str) -> None:
        if job.finished or job.cancelled:
            return
        job.cancel_reason = reason
        if job in self._waiting:
            self._waiting.remove(job)
            job.turn.set()
            self._report_positions()
        elif job.scope is not None:
            job.scope.cancel()

    def _release(self, job: Job) -> None:
        if job in self._running:
            self._running.remove(job)
        elif job in self._waiting:
            self._waiting.remove(job)
        while self._waiting and len(self._running) < self._max_concurrency:
            next_job = self._waiting.popleft()
            self._running.append(next_job)
            next_job.turn.set()
        self._report_positions()

    def _report_positions(self) -> None:
        for position, waiting in enumerate(self._waiting, start=1):
            if waiting.position != position:
                waiting.position = position
                waiting.progress.queued(position)


def same_id(a: JsonId, b: JsonId) -> bool:
    """JSON equality of two ids: numbers by value (1 and 1.0 alike), strings apart."""
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return type(a) is type(b) and a == b
    return a == b


def _cancelled(job: Job, reason: str | None) -> WorkerError:
    text = reason or "cancelled"
    return Cancelled(
        f"Request cancelled: {text}.",
        ErrorDetailData(reason=text),
    )
