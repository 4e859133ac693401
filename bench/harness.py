"""What the benchmarks share: a stand-in setup, a worker to talk to, statistics."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from client.process import WorkerProcess, open_worker
from client.session import WorkerSession
from fixtures.standin import install_standin

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER_COMMAND = [sys.executable, "-m", "worker"]


@dataclass
class Row:
    """One line of the results table."""

    name: str
    unit: str
    samples: list[float]
    target: str
    met: bool | None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return median(self.samples)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": self.median,
            "p95": self.p95,
            "runs": len(self.samples),
            "target": self.target,
            "met": self.met,
            "notes": self.notes,
            **self.extra,
        }


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


class StandInSetup:
    """A fake resource bundle and a private temp dir; the environment for a worker."""

    def __init__(self) -> None:
        self._root = tempfile.TemporaryDirectory(prefix="imagegen-bench-")
        root = Path(self._root.name)
        self.standin = install_standin(root / "standin")
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.outputs = root / "outputs"
        self.outputs.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.standin.env(),
            "SYSTEMSCULPT_LOCAL_IMAGEGEN_LOG_LEVEL": "warning",
            "TMPDIR": str(self.tmp),
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            **extra,
        }

    def close(self) -> None:
        self._root.cleanup()


@asynccontextmanager
async def running_worker(env: dict[str, str]) -> AsyncIterator[WorkerProcess]:
    """A worker on the client library, with this environment added to the bench's."""
    async with open_worker(WORKER_COMMAND, {**os.environ, **env}) as worker:
        yield worker


async def timed_cancel(session: WorkerSession, request_id: Any) -> float:
    """Cancel a running generate: milliseconds from sending `cancel` to its -32800 read."""
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        group.start_soon(session.call, "cancel", {"requestId": request_id})
        response = await session.response(request_id)
    assert response["error"]["code"] == -32800, response
    return (time.perf_counter() - started) * 1000
