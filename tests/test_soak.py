"""A few hundred mixed requests over the real stdio, with faults and cancels at random,
then every fault once more on its own.

What is asserted holds for every draw: each request is answered exactly once, every line
is JSON, each generate's answer is one its fault and the cancels sent for it allow, and
an id that a cancel reported is answered -32800. The counted cases are forced afterwards,
one job per fault with nothing else running, so no draw can leave one out.

Size: SOAK_REQUESTS (default 300, what CI runs); seed: SOAK_SEED.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from fixtures.proc import proc_status_kib
from tests.standin import StandIn
from tests.worker_clients import WorkerProcess, request

StartWorker = Callable[..., WorkerProcess]

RESULT = "result"
FAULTS: dict[str, tuple[int, str]] = {
    # fault words in the prompt: (weight, the answer it gets when nothing interferes)
    "": (30, RESULT),
    "standin:fail_at_step=1": (3, "-32003"),
    "standin:crash_at_step=1": (2, "-32003"),
    "standin:corrupt_png=1": (2, "-32005"),
    "standin:no_image=1": (2, "-32005"),
    "standin:image_size=64": (1, "-32005"),
    "standin:garbage=1": (2, RESULT),
    "standin:grandchild=1": (2, RESULT),
    "standin:stderr_bytes=200000": (2, RESULT),
    "standin:flood_bytes=300000": (1, RESULT),
    "standin:seconds_per_step=0.05": (3, RESULT),
    "standin:hang=1 standin:ignore_sigterm=1": (1, "-32004"),
}
MALFORMED = [
    b"{not json",
    b"\xff\xfe\xfd",
    b"[]",
    b'{"jsonrpc":"1.0","method":"capabilities","id":1}',
    b"42",
    b'{"jsonrpc":"2.0","method":7,"id":"x"}',
]


@dataclass
class Ledger:
    """What was sent, and what came back, keyed by request id."""

    expected: set[Any] = field(default_factory=set)
    faults: dict[str, str] = field(default_factory=dict)
    """generate id -> its fault words."""
    runs: dict[str, str] = field(default_factory=dict)
    may_be_cancelled: set[str] = field(default_factory=set)
    reported_cancelled: set[Any] = field(default_factory=set)
    answers: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)
    null_answers: int = 0

    def take(self, message: Any) -> None:
        for item in message if isinstance(message, list) else [message]:
            if item.get("method") == "progress":
                continue
            if item["id"] is None:
                self.null_answers += 1
                continue
            self.answers.setdefault(item["id"], []).append(item)
            result = item.get("result")
            if isinstance(result, dict) and "cancelled" in result:
                self.reported_cancelled |= set(result["cancelled"])

    def done(self, null_answers_expected: int) -> bool:
        return set(self.answers) == self.expected and self.null_answers >= null_answers_expected


def outcome(answer: dict[str, Any]) -> str:
    return RESULT if "result" in answer else str(answer["error"]["code"])


def _drain(worker: WorkerProcess, ledger: Ledger, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = worker.receive(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            return
        ledger.take(message)


@pytest.mark.soak
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_soak(standin: StandIn, worker_process: StartWorker) -> None:
    total = int(os.environ.get("SOAK_REQUESTS", "300"))
    rng = random.Random(int(os.environ.get("SOAK_SEED", "20261125")))
    worker = worker_process(
        {
            **standin.env,
            "STANDIN_SD_SECONDS_PER_STEP": "0.002",
            "SYSTEMSCULPT_LOCAL_DIFFUSION_MAX_QUEUE": "16",
            "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "3",
        }
    )
    assert "result" in worker.call("capabilities", id_="warm-up")
    ledger = Ledger()
    warm_rss = 0
    null_answers_expected = 0
    generated: list[str] = []
    runs = [f"run-{n}" for n in range(6)]

    for number in range(total):
        kind = rng.choices(
            ["generate", "cancel-id", "cancel-run", "capabilities", "malformed", "lsp", "batch"],
            weights=[45, 12, 4, 18, 10, 4, 7],
        )[0]
        id_ = f"r{number}"
        if kind == "generate":
            fault = rng.choices(list(FAULTS), weights=[w for w, _ in FAULTS.values()])[0]
            run = rng.choice(runs)
            params: dict[str, Any] = {
                "prompt": f"fox {number} {fault}",
                "runId": run,
                "count": rng.randint(1, 2),
            }
            if "hang" in fault:
                params["timeoutMs"] = 1000
            worker.send(request("generate", params, id_))
            generated.append(id_)
            ledger.faults[id_], ledger.runs[id_] = fault, run
            ledger.expected.add(id_)
        elif kind == "cancel-id" and generated:
            target = rng.choice(generated[-8:])
            ledger.may_be_cancelled.add(target)
            worker.send(request("cancel", {"requestId": target}, id_))
            ledger.expected.add(id_)
        elif kind == "cancel-run":
            run = rng.choice(runs)
            ledger.may_be_cancelled |= {g for g in generated if ledger.runs[g] == run}
            worker.send(request("cancel", {"runId": run}, id_))
            ledger.expected.add(id_)
        elif kind == "malformed":
            worker.send_raw(rng.choice(MALFORMED) + b"\n")
            null_answers_expected += 1
        elif kind == "lsp" and generated:
            ledger.may_be_cancelled.add(generated[-1])
            worker.send(
                {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": generated[-1]}}
            )
        elif kind == "batch":
            worker.send([request("capabilities", id_=f"{id_}-a"), request("nope", id_=f"{id_}-b")])
            ledger.expected |= {f"{id_}-a", f"{id_}-b"}
        else:
            worker.send(request("capabilities", id_=id_))
            ledger.expected.add(id_)
        _drain(worker, ledger, rng.uniform(0, 0.03))
        if number == 20:
            warm_rss = proc_status_kib(worker.pid, "VmRSS")

    deadline = time.monotonic() + 240
    while not ledger.done(null_answers_expected):
        unanswered = sorted(ledger.expected - set(ledger.answers))[:10]
        assert time.monotonic() < deadline, f"unanswered: {unanswered}"
        _drain(worker, ledger, 1.0)
    _drain(worker, ledger, 0.5)

    assert {id_: len(a) for id_, a in ledger.answers.items() if len(a) != 1} == {}
    assert set(ledger.answers) == ledger.expected
    assert ledger.null_answers == null_answers_expected
    inconsistent = {}
    for id_, fault in ledger.faults.items():
        got = outcome(ledger.answers[id_][0])
        allowed = {FAULTS[fault][1], "-32006"}  # a full queue may refuse any of them
        if id_ in ledger.may_be_cancelled:
            allowed.add("-32800")
        if id_ in ledger.reported_cancelled:
            allowed = {"-32800"}  # a cancel that names a job decides its answer
        if got not in allowed:
            inconsistent[id_] = (fault, got, sorted(allowed))
    assert inconsistent == {}
    assert ledger.reported_cancelled <= ledger.may_be_cancelled
    outcomes = Counter(outcome(a[0]) for id_, a in ledger.answers.items() if id_ in ledger.faults)

    # Every fault once more, alone: the answer is exactly the one it causes.
    for number, (fault, (_, expected)) in enumerate(FAULTS.items()):
        params = {"prompt": f"alone {number} {fault}"}
        if "hang" in fault:
            params["timeoutMs"] = 1000
        answer = worker.call("generate", params, id_=f"alone-{number}")
        assert outcome(answer) == expected, (fault, answer)

    end_rss = proc_status_kib(worker.pid, "VmRSS")
    worker.close_input()
    assert worker.wait(30) == 0
    for line in worker.raw_lines:
        json.loads(line)
    assert standin.live_processes() == []
    assert standin.leftover_temp_entries() == []
    grown_mib = (end_rss - warm_rss) / 1024
    print(f"\nsoak: {total} requests, generate outcomes {dict(outcomes)}")
    print(f"soak: RSS {warm_rss} -> {end_rss} KiB")
    assert grown_mib < 40, f"worker memory grew by {grown_mib:.1f} MiB over the soak"
