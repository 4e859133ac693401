from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.worker_clients import WorkerProcess, start_worker_process


@pytest.fixture
def worker_process() -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers as real subprocesses; any left running are killed after the test."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> WorkerProcess:
        process = start_worker_process(env, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
