"""`generate` over the worker's real stdio, the way Studio drives it."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from tests.standin import StandIn
from tests.worker_clients import WorkerProcess, request

StartWorker = Callable[..., WorkerProcess]


def _collect(worker: WorkerProcess, id_: Any) -> tuple[dict[str, Any], list[tuple[float, Any]]]:
    """The response to `id_`, and (arrival time, params) of the progress before it."""
    progress = []
    while True:
        message = worker.receive(timeout=30)
        if message.get("method") == "progress":
            progress.append((time.monotonic(), message["params"]))
        elif message.get("id") == id_:
            return message, progress


def test_progress_arrives_while_the_sampler_is_still_running(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process({**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.15"})
    worker.send(request("generate", {"prompt": "a fox", "stepCount": 6}, "live"))
    response, progress = _collect(worker, "live")
    answered = time.monotonic()
    assert "result" in response
    steps = [(at, p) for at, p in progress if p["phase"] == "sampling" and p["step"] > 0]
    assert [p["step"] for _, p in steps] == [1, 2, 3, 4, 5, 6, 7]
    assert all(p["totalSteps"] == 7 for _, p in steps)
    first_step_at, last_step_at = steps[0][0], steps[-1][0]
    # Seven steps of 0.15 s: had the output been buffered, all would arrive at the end.
    assert answered - first_step_at > 0.6
    assert last_step_at - first_step_at > 0.6
    worker.close_input()
    assert worker.wait() == 0


def test_results_and_errors_over_stdio_leave_nothing_behind(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process(standin.env)
    ok = worker.call("generate", {"prompt": '-- --help "fox"\n🦊', "count": 2}, "ok")
    images = ok["result"]["images"]
    assert len(images) == 2
    assert all(base64.b64decode(i["base64"]).startswith(b"\x89PNG") for i in images)

    failed = worker.call("generate", {"prompt": "fox standin:fail_at_step=1"}, "failed")
    assert failed["error"]["code"] == -32003

    timed_out = worker.call(
        "generate", {"prompt": "fox standin:hang=1", "timeoutMs": 1000}, "timed-out"
    )
    assert timed_out["error"]["code"] == -32004

    unsupported = worker.call("generate", {"prompt": "fox", "aspectRatio": "4:3"}, "ratio")
    assert unsupported["error"]["data"] == {"feature": "aspectRatio", "supported": ["1:1"]}

    assert "result" in worker.call("capabilities", id_="still-serving")
    assert standin.live_processes(exclude={worker.pid}) == []
    assert standin.leftover_temp_entries() == []
    worker.close_input()
    assert worker.wait() == 0


def test_capabilities_is_answered_while_a_generate_runs(
    standin: StandIn, worker_process: StartWorker
) -> None:
    worker = worker_process({**standin.env, "STANDIN_SD_SECONDS_PER_STEP": "0.1"})
    worker.send(request("generate", {"prompt": "fox", "stepCount": 10}, "slow"))
    worker.send(request("capabilities", id_="caps"))
    first_response = next(m for m in worker.messages() if "method" not in m)
    assert first_response["id"] == "caps"
    response, _ = _collect(worker, "slow")
    assert "result" in response
    worker.close_input()
    assert worker.wait() == 0
