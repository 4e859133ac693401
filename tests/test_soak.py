"""A few hundred mixed requests over the real stdio, with faults and cancels at random.

Size: SOAK_REQUESTS (default 300, what CI runs); seed: SOAK_SEED.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.standin import StandIn, proc_status_kib
from tests.worker_clients import WorkerProcess, request

StartWorker = Callable[..., WorkerProcess]

FAULTS = [
    ("", 30),
    ("standin:fail_at_step=1", 3),
    ("standin:crash_at_step=1", 2),
    ("standin:corrupt_png=1", 2),
    ("standin:no_image=1", 2),
    ("standin:image_size=64", 1),
    ("standin:garbage=1", 2),
    ("standin:grandchild=1", 2),
    ("standin:stderr_bytes=200000", 2),
    ("standin:seconds_per_step=0.05", 3),
    ("standin:hang=1 standin:ignore_sigterm=1", 1),
]
MALFORMED = [
    b"{not json",
    b"\xff\xfe\xfd",
    b"[]",
    b'{"jsonrpc":"1.0","method":"capabilities","id":1}',
    b"42",
    b'{"jsonrpc":"2.0","method":7,"id":"x"}',
]


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
    warm_rss = 0
    expected: set[Any] = set()
    null_answers_expected = 0
    generated: list[str] = []
    runs = [f"run-{n}" for n in range(6)]
    answered: Counter[Any] = Counter()
    outcomes: Counter[str] = Counter()

    def drain(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = worker.receive(timeout=max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                return
            for item in message if isinstance(message, list) else [message]:
                if item.get("method") == "progress":
                    continue
                answered[item["id"]] += 1
                if "error" in item:
                    outcomes[str(item["error"]["code"])] += 1
                else:
                    outcomes["result"] += 1

    for number in range(total):
        kind = rng.choices(
            ["generate", "cancel-id", "cancel-run", "capabilities", "malformed", "lsp", "batch"],
            weights=[45, 12, 4, 18, 10, 4, 7],
        )[0]
        id_ = f"r{number}"
        if kind == "generate":
            fault = rng.choices([f for f, _ in FAULTS], weights=[w for _, w in FAULTS])[0]
            params: dict[str, Any] = {
                "prompt": f"fox {number} {fault}",
                "runId": rng.choice(runs),
                "count": rng.randint(1, 2),
            }
            if "hang" in fault:
                params["timeoutMs"] = 1000
            worker.send(request("generate", params, id_))
            generated.append(id_)
            expected.add(id_)
        elif kind == "cancel-id" and generated:
            worker.send(request("cancel", {"requestId": rng.choice(generated[-8:])}, id_))
            expected.add(id_)
        elif kind == "cancel-run":
            worker.send(request("cancel", {"runId": rng.choice(runs)}, id_))
            expected.add(id_)
        elif kind == "malformed":
            worker.send_raw(rng.choice(MALFORMED) + b"\n")
            null_answers_expected += 1
        elif kind == "lsp" and generated:
            worker.send(
                {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": generated[-1]}}
            )
        elif kind == "batch":
            worker.send([request("capabilities", id_=f"{id_}-a"), request("nope", id_=f"{id_}-b")])
            expected |= {f"{id_}-a", f"{id_}-b"}
        else:
            worker.send(request("capabilities", id_=id_))
            expected.add(id_)
        drain(rng.uniform(0, 0.03))
        if number == 20:
            warm_rss = proc_status_kib(worker.pid, "VmRSS")

    deadline = time.monotonic() + 240
    while (set(answered) - {None}) != expected or answered[None] < null_answers_expected:
        assert time.monotonic() < deadline, f"unanswered: {sorted(expected - set(answered))[:10]}"
        drain(1.0)
    drain(0.5)

    assert all(count == 1 for id_, count in answered.items() if id_ is not None), [
        id_ for id_, count in answered.items() if count > 1
    ]
    assert answered[None] == null_answers_expected
    assert set(answered) - {None} == expected
    end_rss = proc_status_kib(worker.pid, "VmRSS")
    worker.close_input()
    assert worker.wait(30) == 0
    for line in worker.raw_lines:
        json.loads(line)
    assert standin.live_processes() == []
    assert standin.leftover_temp_entries() == []
    grown_mib = (end_rss - warm_rss) / 1024
    print(f"\nsoak: {total} requests, outcomes {dict(outcomes)}, RSS {warm_rss} -> {end_rss} KiB")
    assert grown_mib < 40, f"worker memory grew by {grown_mib:.1f} MiB over the soak"
    assert outcomes["result"] > 0 and outcomes["-32800"] > 0 and outcomes["-32003"] > 0
