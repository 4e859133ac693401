"""Progress that tells slow from stuck: every notification says how long the request has
been going, and a step or a load that runs long is reported again while it runs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.standin import StandIn, generate_once
from tests.worker_clients import in_process_worker, request
from worker import progress
from worker.backends.registry import read_settings


def _progress(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["params"] for m in messages if m.get("method") == "progress"]


async def test_a_long_step_is_reported_again_with_how_long_it_has_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.1)
    settings = read_settings(
        {"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock", "SYSTEMSCULPT_LOCAL_MOCK_STEP_MS": "700"}
    )
    async with in_process_worker(settings) as worker:
        await worker.send(request("generate", {"prompt": "slow", "stepCount": 2}, "g"))
        seen = []
        while "method" in (message := await worker.receive()):
            seen.append(message)
    assert "result" in message
    notes = _progress(seen)
    elapsed = [note["elapsedMs"] for note in notes]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 2000
    beats = [note for note in notes if note["message"].endswith("s so far)")]
    assert len(beats) >= 4, [note["message"] for note in notes]
    for beat in beats:
        news = next(n for n in reversed(notes[: notes.index(beat)]) if n not in beats)
        assert (beat["phase"], beat["step"], beat["totalSteps"]) == (
            news["phase"],
            news["step"],
            news["totalSteps"],
        )
        assert beat["message"].startswith(news["message"])


async def test_quick_jobs_send_no_heartbeat_and_every_notification_counts_time(
    standin: StandIn,
) -> None:
    response, notes = await generate_once(standin, {"prompt": "quick", "stepCount": 3})
    assert "result" in response
    assert not [note for note in notes if note["message"].endswith("s so far)")]
    elapsed = [note["elapsedMs"] for note in notes]
    assert all(isinstance(ms, int) and ms >= 0 for ms in elapsed) and elapsed == sorted(elapsed)
