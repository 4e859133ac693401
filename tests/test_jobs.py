"""Queue and cancel, in-process against the stand-in: every request answered exactly once."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Any
from unittest import mock

import anyio
import pytest

from tests.standin import StandIn
from tests.worker_clients import LINUX, InProcessWorker, in_process_worker, request
from worker.backends.registry import read_settings

SLOW = {"STANDIN_SD_SECONDS_PER_STEP": "0.05"}


class Inbox:
    """Reads the worker's output in the background, sorted by request id."""

    def __init__(self, worker: InProcessWorker) -> None:
        self.worker = worker
        self.responses: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.progress: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.order: list[Any] = []
        self.changed = anyio.Event()

    async def pump(self) -> None:
        while True:
            message = await self.worker.receive(wait=60)
            if message.get("method") == "progress":
                self.progress[message["params"]["requestId"]].append(message["params"])
            else:
                self.responses[message["id"]].append(message)
                self.order.append(message["id"])
            self.changed.set()
            self.changed = anyio.Event()

    async def wait_for(self, condition: Any, limit: float = 30) -> None:
        with anyio.fail_after(limit):
            while not condition():
                await self.changed.wait()

    async def response(self, id_: Any) -> dict[str, Any]:
        await self.wait_for(lambda: self.responses[id_])
        return self.responses[id_][0]

    def phases(self, id_: Any) -> list[str]:
        return [p["phase"] for p in self.progress[id_]]


async def _with_worker(
    standin: StandIn, env: dict[str, str], body: Any, steering: dict[str, str] | None = None
) -> None:
    settings = read_settings({**standin.env, **env})
    with mock.patch.dict(os.environ, {**SLOW, **(steering or {})}):
        async with in_process_worker(settings, LINUX) as worker, anyio.create_task_group() as tg:
            inbox = Inbox(worker)
            tg.start_soon(inbox.pump)
            await body(worker, inbox)
            tg.cancel_scope.cancel()


async def test_jobs_wait_in_order_and_hear_their_queue_position(standin: StandIn) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        for name in ("a", "b", "c"):
            await worker.send(request("generate", {"prompt": name, "stepCount": 3}, name))
        await inbox.wait_for(lambda: len(inbox.order) == 3)
        assert inbox.order == ["a", "b", "c"]
        assert all("result" in inbox.responses[n][0] for n in "abc")
        assert "queued" not in inbox.phases("a")
        assert [p["queuePosition"] for p in inbox.progress["b"] if p["phase"] == "queued"] == [1]
        assert [p["queuePosition"] for p in inbox.progress["c"] if p["phase"] == "queued"] == [2, 1]
        queued = inbox.progress["c"][0]
        assert queued["message"] == "Waiting for the sampler: position 2 in the queue"
        assert inbox.phases("c").index("loading") > inbox.phases("c").index("queued")

    await _with_worker(standin, {}, body)


async def test_a_full_queue_answers_at_once(standin: StandIn) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        for name in ("a", "b", "c"):
            await worker.send(request("generate", {"prompt": name, "stepCount": 10}, name))
        full = await inbox.response("c")
        assert full["error"]["code"] == -32006
        assert full["error"]["data"] == {"maxQueue": 1}
        assert "SYSTEMSCULPT_LOCAL_DIFFUSION_MAX_QUEUE" in full["error"]["message"]
        assert not inbox.responses["a"] and not inbox.responses["b"]
        await inbox.wait_for(lambda: inbox.responses["a"] and inbox.responses["b"])

    await _with_worker(standin, {"SYSTEMSCULPT_LOCAL_DIFFUSION_MAX_QUEUE": "1"}, body)


async def test_max_concurrency_runs_jobs_side_by_side(standin: StandIn) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        for name in ("a", "b"):
            await worker.send(request("generate", {"prompt": name, "stepCount": 3}, name))
        await inbox.wait_for(lambda: len(inbox.order) == 2)
        assert "queued" not in inbox.phases("b")

    await _with_worker(standin, {"SYSTEMSCULPT_LOCAL_DIFFUSION_MAX_CONCURRENCY": "2"}, body)


async def test_cancelling_a_running_job_stops_its_sampler_before_answering(
    standin: StandIn,
) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        await worker.send(request("generate", {"prompt": "fox", "stepCount": 40}, "run"))
        await inbox.wait_for(lambda: "sampling" in inbox.phases("run"))
        assert standin.live_processes() != []
        await worker.send(request("cancel", {"requestId": "run"}, "c1"))
        assert (await inbox.response("c1"))["result"] == {"cancelled": ["run"]}
        cancelled = await inbox.response("run")
        # When the answer comes, the sampler is gone and its directory removed.
        assert standin.live_processes() == []
        assert standin.leftover_temp_entries() == []
        assert cancelled["error"]["code"] == -32800
        assert cancelled["error"]["data"] == {"reason": "cancelled by the host"}
        await worker.send(request("cancel", {"requestId": "run"}, "c2"))
        assert (await inbox.response("c2"))["result"] == {"cancelled": []}
        await anyio.sleep(0.1)
        assert len(inbox.responses["run"]) == 1

    await _with_worker(standin, {}, body)


async def test_cancelling_a_queued_job_answers_it_without_running_it(standin: StandIn) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        await worker.send(request("generate", {"prompt": "a", "stepCount": 20}, "a"))
        await worker.send(request("generate", {"prompt": "b", "stepCount": 2}, "b"))
        await worker.send(request("generate", {"prompt": "c", "stepCount": 2}, "c"))
        await inbox.wait_for(lambda: inbox.phases("c") == ["queued"])
        await worker.send(request("cancel", {"requestId": "b"}, "cancel-b"))
        assert (await inbox.response("b"))["error"]["code"] == -32800
        assert inbox.phases("b") == ["queued"]
        # c moves up to position 1 when b leaves the queue.
        await inbox.wait_for(lambda: len(inbox.progress["c"]) >= 2)
        assert [p["queuePosition"] for p in inbox.progress["c"]][:2] == [2, 1]
        assert "result" in await inbox.response("a")
        assert "result" in await inbox.response("c")

    await _with_worker(standin, {}, body)


async def test_cancel_by_run_takes_every_job_of_that_run_only(standin: StandIn) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        jobs = [("r1-a", "run-1"), ("r2-a", "run-2"), ("r1-b", "run-1")]
        for id_, run in jobs:
            await worker.send(
                request("generate", {"prompt": id_, "runId": run, "stepCount": 20}, id_)
            )
        await inbox.wait_for(lambda: "sampling" in inbox.phases("r1-a"))
        await worker.send(request("cancel", {"runId": "run-1"}, "cancel"))
        assert sorted((await inbox.response("cancel"))["result"]["cancelled"]) == ["r1-a", "r1-b"]
        assert (await inbox.response("r1-a"))["error"]["code"] == -32800
        assert (await inbox.response("r1-b"))["error"]["code"] == -32800
        assert "result" in await inbox.response("r2-a")
        assert "loading" in inbox.phases("r2-a")

    await _with_worker(standin, {}, body)


async def test_the_lsp_cancel_notification_is_honoured(standin: StandIn) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        await worker.send(request("generate", {"prompt": "fox", "stepCount": 40}, 17))
        await inbox.wait_for(lambda: "sampling" in inbox.phases(17))
        await worker.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 17}})
        assert (await inbox.response(17))["error"]["code"] == -32800
        assert list(inbox.responses) == [17]

    await _with_worker(standin, {}, body)


async def test_a_cancelled_sampler_ignoring_sigterm_is_killed_after_the_grace(
    standin: StandIn,
) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        await worker.send(request("generate", {"prompt": "fox", "stepCount": 40}, "stubborn"))
        await worker.send(request("generate", {"prompt": "next", "stepCount": 2}, "next"))
        await inbox.wait_for(lambda: "sampling" in inbox.phases("stubborn"))
        stubborn = set(standin.live_processes())
        assert len(stubborn) == 2  # the sampler and the child it left running
        started = anyio.current_time()
        await worker.send(request("cancel", {"requestId": "stubborn"}, "c"))
        assert (await inbox.response("stubborn"))["error"]["code"] == -32800
        assert anyio.current_time() - started >= 0.3  # the 300 ms grace of the stand-in env
        assert stubborn.isdisjoint(standin.live_processes())
        assert "result" in await inbox.response("next")

    await _with_worker(
        standin, {}, body, {"STANDIN_SD_IGNORE_SIGTERM": "1", "STANDIN_SD_GRANDCHILD": "1"}
    )


@pytest.mark.parametrize(
    "params",
    [{"requestId": "x", "runId": "y"}, {}, {"requestId": True}, {"requestId": [1]}, {"runId": 5}],
)
async def test_cancel_params_are_checked(standin: StandIn, params: dict[str, Any]) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        await worker.send(request("cancel", params, "c"))
        assert (await inbox.response("c"))["error"]["code"] == -32602

    await _with_worker(standin, {}, body)


@pytest.mark.parametrize("via", ["cancel", "$/cancelRequest"])
@pytest.mark.parametrize(
    ("generate_id", "named_as"), [(1.5, 1.5), (None, None), (2.0, 2), ("7", "7")]
)
async def test_every_id_generate_accepts_can_be_cancelled(
    standin: StandIn, via: str, generate_id: Any, named_as: Any
) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        await worker.send(request("generate", {"prompt": "fox", "stepCount": 40}, generate_id))
        await inbox.wait_for(lambda: "sampling" in inbox.phases(generate_id))
        if via == "cancel":
            await worker.send(request("cancel", {"requestId": named_as}, "c"))
            assert (await inbox.response("c"))["result"] == {"cancelled": [generate_id]}
        else:
            await worker.send({"jsonrpc": "2.0", "method": via, "params": {"id": named_as}})
        answer = await inbox.response(generate_id)
        assert answer["error"]["code"] == -32800, answer

    await _with_worker(standin, {}, body)


async def test_a_generate_sent_as_a_notification_is_not_run(
    standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        await worker.send(
            {"jsonrpc": "2.0", "method": "generate", "params": {"prompt": "fox", "stepCount": 40}}
        )
        await worker.send(request("capabilities", id_="after"))
        assert "result" in await inbox.response("after")
        await anyio.sleep(0.3)
        assert standin.live_processes() == []
        assert inbox.order == ["after"] and not inbox.progress

    await _with_worker(standin, {}, body)
    assert "ignored 'generate' sent as a notification (no id)" in caplog.text


async def test_a_job_being_cancelled_is_reported_once(standin: StandIn) -> None:
    """The sampler ignores SIGTERM, so the job stays on its way out for the kill grace;
    a second cancel meanwhile (by request or by run) says it cancelled nothing."""

    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        prompt = "fox standin:ignore_sigterm=1"
        await worker.send(request("generate", {"prompt": prompt, "runId": "r"}, "job"))
        await inbox.wait_for(lambda: "sampling" in inbox.phases("job"))
        await worker.send(request("cancel", {"requestId": "job"}, "first"))
        assert (await inbox.response("first"))["result"] == {"cancelled": ["job"]}
        await worker.send(request("cancel", {"requestId": "job"}, "again"))
        await worker.send(request("cancel", {"runId": "r"}, "by-run"))
        assert (await inbox.response("again"))["result"] == {"cancelled": []}
        assert (await inbox.response("by-run"))["result"] == {"cancelled": []}
        assert (await inbox.response("job"))["error"]["code"] == -32800
        assert "job" not in inbox.order[: inbox.order.index("again")]

    await _with_worker(
        standin,
        {"SYSTEMSCULPT_LOCAL_DIFFUSION_KILL_GRACE_MS": "1500"},
        body,
        {"STANDIN_SD_SECONDS_PER_STEP": "0.2"},
    )


async def test_cancel_racing_the_end_of_a_job_answers_exactly_once(standin: StandIn) -> None:
    """Cancel lands at random moments around the sampler's exit. Whatever the moment, the
    job gets one answer, and it is -32800 exactly when cancel said it cancelled it."""
    rng = random.Random(4)

    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        for attempt in range(12):
            id_ = f"job-{attempt}"
            await worker.send(request("generate", {"prompt": "fox", "stepCount": 2}, id_))
            await anyio.sleep(rng.uniform(0.0, 0.25))
            await worker.send(request("cancel", {"requestId": id_}, f"cancel-{attempt}"))
            said = (await inbox.response(f"cancel-{attempt}"))["result"]["cancelled"]
            answer = await inbox.response(id_)
            await anyio.sleep(0.02)
            assert len(inbox.responses[id_]) == 1
            assert ("error" in answer and answer["error"]["code"] == -32800) == (said == [id_])
            assert ("result" in answer) == (said == [])

    await _with_worker(standin, {}, body, {"STANDIN_SD_SECONDS_PER_STEP": "0.03"})


async def test_faults_in_one_job_never_block_the_next(standin: StandIn) -> None:
    faults = [
        "standin:crash_at_step=0",
        "standin:fail_at_step=1",
        "standin:corrupt_png=1",
        "standin:garbage=1 standin:stderr_bytes=300000",
        "standin:grandchild=1",
        "standin:no_image=1",
    ]

    async def body(worker: InProcessWorker, inbox: Inbox) -> None:
        for index, fault in enumerate(faults):
            await worker.send(
                request("generate", {"prompt": f"fox {fault}", "stepCount": 2}, index)
            )
            await worker.send(request("generate", {"prompt": "fine", "stepCount": 2}, f"ok{index}"))
        await inbox.wait_for(lambda: len(inbox.order) == 2 * len(faults), limit=60)
        codes = [inbox.responses[i][0].get("error", {}).get("code") for i in range(len(faults))]
        assert codes == [-32003, -32003, -32005, None, None, -32005]
        assert all("result" in inbox.responses[f"ok{i}"][0] for i in range(len(faults)))

    await _with_worker(standin, {}, body, {"STANDIN_SD_SECONDS_PER_STEP": "0.005"})
