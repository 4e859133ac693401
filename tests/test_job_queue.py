"""The queue's order is the order requests arrived in, whatever their preparation takes.

Driven on `JobQueue` itself so that one request's preparation can be held open by the
test (an event, not a sleep) while a later one is ready at once: the case a busy machine
makes by chance when it decodes one request's photo slower than the next request's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

import anyio
import pytest

from worker.errors import Cancelled
from worker.jobs import Job, JobQueue
from worker.progress import ProgressReporter


class Positions:
    """Stands in for a job's progress reporter: records the queue positions it hears."""

    def __init__(self) -> None:
        self.heard: list[int] = []

    def queued(self, position: int) -> None:
        self.heard.append(position)


def _job(name: str) -> tuple[Job, Positions]:
    positions = Positions()
    return Job(request_id=name, run_id="run", progress=cast(ProgressReporter, positions)), positions


class Sampler:
    """Work that records when each job starts and finishes when the test says."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, anyio.Event] = {}

    def work(self, name: str) -> Callable[[], Awaitable[str]]:
        self.release[name] = anyio.Event()

        async def run() -> str:
            self.started.append(name)
            await self.release[name].wait()
            return name

        return run


async def test_an_earlier_request_still_preparing_keeps_its_place() -> None:
    queue, sampler = JobQueue(max_concurrency=1, max_queue=8), Sampler()
    (a, _), (b, b_heard), (c, c_heard) = _job("a"), _job("b"), _job("c")
    b_prepared = anyio.Event()
    answers: list[str] = []

    async def request(job: Job, name: str, preparation: anyio.Event | None) -> None:
        with queue.arrival(job):
            with queue.preparing(job):
                if preparation is not None:
                    await preparation.wait()
            answers.append(await queue.run(job, sampler.work(name)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(request, a, "a", None)
        await anyio.wait_all_tasks_blocked()
        assert sampler.started == ["a"]
        tg.start_soon(request, b, "b", b_prepared)  # arrives second, prepares slowly
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(request, c, "c", None)  # arrives third, ready at once
        await anyio.wait_all_tasks_blocked()
        assert c_heard.heard == [], "c went ahead of b, which arrived before it"
        b_prepared.set()
        await anyio.wait_all_tasks_blocked()
        assert (b_heard.heard, c_heard.heard) == ([1], [2])
        for name in ("a", "b", "c"):
            await anyio.wait_all_tasks_blocked()
            sampler.release[name].set()
    assert sampler.started == ["a", "b", "c"]
    assert answers == ["a", "b", "c"]
    assert c_heard.heard == [2, 1]


async def test_a_request_waiting_behind_a_preparing_one_is_cancelled_at_once() -> None:
    queue, sampler = JobQueue(max_concurrency=1, max_queue=8), Sampler()
    (b, _), (c, _) = _job("b"), _job("c")
    b_prepared = anyio.Event()
    outcome: list[str] = []

    async def slow_preparation() -> None:
        with queue.arrival(b), queue.preparing(b):
            await b_prepared.wait()

    async def ready_request() -> None:
        with queue.arrival(c):
            try:
                await queue.run(c, sampler.work("c"))
            except Cancelled as error:
                outcome.append(str(error))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_preparation)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ready_request)
        await anyio.wait_all_tasks_blocked()
        assert queue.cancel_request("c") == ["c"]
        await anyio.wait_all_tasks_blocked()
        assert outcome == ["Request cancelled: cancelled by the host."]  # b still preparing
        b_prepared.set()
    assert sampler.started == []


async def test_an_earlier_request_that_fails_in_preparation_lets_the_next_run() -> None:
    queue, sampler = JobQueue(max_concurrency=1, max_queue=8), Sampler()
    (b, _), (c, _) = _job("b"), _job("c")
    b_fails = anyio.Event()

    async def failing_preparation() -> None:
        with pytest.raises(ValueError), queue.arrival(b), queue.preparing(b):
            await b_fails.wait()
            raise ValueError("the photo is not an image")

    async def ready_request() -> None:
        with queue.arrival(c):
            await queue.run(c, sampler.work("c"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(failing_preparation)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ready_request)
        await anyio.wait_all_tasks_blocked()
        assert sampler.started == []
        b_fails.set()
        await anyio.wait_all_tasks_blocked()
        assert sampler.started == ["c"]
        sampler.release["c"].set()
