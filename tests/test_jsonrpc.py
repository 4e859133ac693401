"""JSON-RPC 2.0 over the worker's transport, in-process (memory streams)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from protocol.base import WireModel
from protocol.models import MAX_BATCH_MEMBERS, CapabilitiesParams, CapabilitiesResult
from tests.worker_clients import in_process_worker, request
from worker.backends.registry import read_settings
from worker.context import RequestContext
from worker.dispatch import Dispatcher, Method
from worker.server import Server


async def test_capabilities_round_trip() -> None:
    async with in_process_worker() as worker:
        response = await worker.call("capabilities", id_=7)
    assert response["jsonrpc"] == "2.0" and response["id"] == 7
    assert response["result"]["worker"]["name"] == "studio-imagegen-worker"
    CapabilitiesResult.model_validate(response["result"], by_alias=True, by_name=False)


@pytest.mark.parametrize("id_", ["abc", 0, -5, 12345678901234567890, 1.5, None, ""])
async def test_id_is_echoed_exactly(id_: Any) -> None:
    async with in_process_worker() as worker:
        response = await worker.call("capabilities", id_=id_)
    assert response["id"] == id_ and type(response["id"]) is type(id_)
    assert "result" in response


async def test_empty_params_object_and_empty_array_mean_no_params() -> None:
    async with in_process_worker() as worker:
        assert "result" in await worker.call("capabilities", {}, id_=1)
        assert "result" in await worker.call("capabilities", [], id_=2)


async def test_positional_params_are_invalid_params() -> None:
    async with in_process_worker() as worker:
        response = await worker.call("cancel", ["req-1"])
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["errors"] == [
        {"field": "params", "message": "positional params are not supported"}
    ]


async def test_invalid_params_lists_every_field_error() -> None:
    async with in_process_worker() as worker:
        response = await worker.call("cancel", {"requestId": 1, "runId": "r", "colour": "red"})
    error = response["error"]
    assert error["code"] == -32602
    fields = {e["field"]: e["message"] for e in error["data"]["errors"]}
    assert fields["colour"] == "unknown field; the known fields are requestId, runId"
    assert "colour" in error["message"]


async def test_a_param_named_like_an_internal_argument_is_just_an_unknown_field() -> None:
    async with in_process_worker() as worker:
        response = await worker.call("capabilities", {"context": 1, "self": 2})
    assert response["error"]["code"] == -32602
    assert [e["field"] for e in response["error"]["data"]["errors"]] == ["context", "self"]


async def test_unknown_params_on_a_method_without_params() -> None:
    async with in_process_worker() as worker:
        response = await worker.call("capabilities", {"verbose": True})
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["errors"] == [
        {"field": "verbose", "message": "unknown field; this method takes no params"}
    ]


async def test_unknown_method_names_the_known_ones() -> None:
    async with in_process_worker() as worker:
        response = await worker.call("generat", {"prompt": "x"}, id_="g")
    assert response["id"] == "g"
    assert response["error"]["code"] == -32601
    assert "'generat'" in response["error"]["message"]
    assert "capabilities" in response["error"]["data"]["reason"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"jsonrpc": "2.0", "method": "capabilities", "id": NaN}', "not valid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"jsonrpc": "2.0", "method": "capabilities", "id": 1', "not valid JSON"),
    ],
)
async def test_parse_errors_have_null_id_and_the_worker_keeps_serving(
    line: bytes, reason: str
) -> None:
    async with in_process_worker() as worker:
        await worker.send_raw(line + b"\n")
        error = await worker.receive()
        assert error["id"] is None and error["error"]["code"] == -32700
        assert reason in error["error"]["data"]["reason"]
        assert "result" in await worker.call("capabilities")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"method": "capabilities", "id": 1}, '"jsonrpc" member must be exactly "2.0"'),
        ({"jsonrpc": "1.0", "method": "capabilities", "id": 1}, '"jsonrpc"'),
        ({"jsonrpc": "2.0", "id": 1}, '"method" member must be a string'),
        ({"jsonrpc": "2.0", "method": 5, "id": 1}, '"method" member must be a string'),
        ({"jsonrpc": "2.0", "method": "capabilities", "id": True}, '"id" member'),
        ({"jsonrpc": "2.0", "method": "capabilities", "id": {"a": 1}}, '"id" member'),
        ('{"jsonrpc": "2.0", "method": "capabilities", "id": 1e400}', '"id" member'),
        ({"jsonrpc": "2.0", "method": "capabilities", "params": 3, "id": 1}, '"params"'),
        ({"jsonrpc": "2.0", "method": "capabilities", "id": 1, "extra": 1}, "'extra'"),
        ("capabilities", "expected a request object, got str"),
        (42, "expected a request object, got int"),
    ],
)
async def test_invalid_requests_have_null_id(message: Any, reason: str) -> None:
    async with in_process_worker() as worker:
        if isinstance(message, str) and message.startswith("{"):
            await worker.send_raw(message.encode() + b"\n")  # JSON Python cannot produce
        else:
            await worker.send(message)
        response = await worker.receive()
    assert response["id"] is None
    assert response["error"]["code"] == -32600
    assert reason in response["error"]["data"]["reason"]


async def test_notifications_get_no_response() -> None:
    async with in_process_worker() as worker:
        await worker.send({"jsonrpc": "2.0", "method": "capabilities"})
        await worker.send({"jsonrpc": "2.0", "method": "no-such-method"})
        await worker.send({"jsonrpc": "2.0", "method": "cancel", "params": [1]})
        response = await worker.call("capabilities", id_="after")
        assert response["id"] == "after"
        worker.close_input()
        assert await worker.remaining() == []


async def test_batch_answers_each_member_in_order_and_skips_notifications() -> None:
    batch = [
        request("capabilities", id_="a"),
        {"jsonrpc": "2.0", "method": "capabilities"},
        request("nope", id_="b"),
        7,
        request("cancel", {"runId": "r"}, id_="c"),
    ]
    async with in_process_worker() as worker:
        await worker.send(batch)
        responses = await worker.receive()
    assert [r["id"] for r in responses] == ["a", "b", None, "c"]
    assert "result" in responses[0]
    assert responses[1]["error"]["code"] == -32601
    assert responses[2]["error"]["code"] == -32600
    assert responses[3]["result"] == {"cancelled": []}


async def test_batch_of_notifications_gets_nothing_and_empty_batch_is_invalid() -> None:
    async with in_process_worker() as worker:
        await worker.send([{"jsonrpc": "2.0", "method": "capabilities"}])
        await worker.send([])
        response = await worker.receive()
        assert response == {
            "jsonrpc": "2.0",
            "error": {
                "code": -32600,
                "message": "Invalid request: an empty batch.",
                "data": {"reason": "an empty batch"},
            },
            "id": None,
        }
        worker.close_input()
        assert await worker.remaining() == []


async def test_a_batch_up_to_the_limit_is_answered_member_by_member() -> None:
    batch = [request("cancel", {"runId": "r"}, id_=n) for n in range(MAX_BATCH_MEMBERS)]
    async with in_process_worker() as worker:
        caps = await worker.call("capabilities")
        assert caps["result"]["limits"]["maxBatchMembers"] == MAX_BATCH_MEMBERS
        await worker.send(batch)
        responses = await worker.receive()
    assert [r["id"] for r in responses] == list(range(MAX_BATCH_MEMBERS))


async def test_a_batch_over_the_limit_is_one_invalid_request_and_serving_goes_on() -> None:
    over = [request("cancel", {"runId": "r"}, id_=n) for n in range(MAX_BATCH_MEMBERS + 1)]
    async with in_process_worker() as worker:
        await worker.send(over)
        response = await worker.receive()
        assert response["id"] is None and response["error"]["code"] == -32600
        assert f"more than {MAX_BATCH_MEMBERS} requests" in response["error"]["message"]
        assert "maxBatchMembers" in response["error"]["message"]
        assert "result" in await worker.call("capabilities", id_=2)


async def test_a_million_empty_members_get_one_answer_without_reading_them_all() -> None:
    """A 3 MB line of a million `{}`: one -32600 for the batch (not a million answers),
    after no more than the limit's members were read."""
    line = b"[" + b",".join([b"{}"] * 1_000_000) + b"]\n"
    async with in_process_worker() as worker:
        await worker.send_raw(line)
        response = await worker.receive()
        assert isinstance(response, dict) and response["error"]["code"] == -32600
        assert "result" in await worker.call("capabilities", id_=2)


async def test_oversized_line_is_invalid_request_and_serving_goes_on() -> None:
    settings = read_settings({"SYSTEMSCULPT_LOCAL_IMAGEGEN_MAX_REQUEST_BYTES": "2048"})
    async with in_process_worker(settings) as worker:
        await worker.send_raw(b'{"jsonrpc":"2.0","method":"capabilities","id":"' + b"x" * 4000)
        await worker.send_raw(b'"}\n')
        response = await worker.receive()
        assert response["id"] is None and response["error"]["code"] == -32600
        assert "over the limit of 2048 bytes" in response["error"]["message"]
        assert "SYSTEMSCULPT_LOCAL_IMAGEGEN_MAX_REQUEST_BYTES" in response["error"]["message"]
        assert (await worker.call("capabilities", id_=2))["id"] == 2


# --- handlers written for the test: concurrency and fault mapping ---------------------


class _Slow:
    def __init__(self) -> None:
        self.release = anyio.Event()

    async def slow(self, context: RequestContext, params: CapabilitiesParams) -> WireModel:
        await self.release.wait()
        return CapabilitiesParams()

    async def fast(self, context: RequestContext, params: CapabilitiesParams) -> WireModel:
        self.release.set()
        return CapabilitiesParams()

    async def broken(self, context: RequestContext, params: CapabilitiesParams) -> WireModel:
        raise KeyError("secret internal detail")


def _test_server(handlers: _Slow) -> Server:
    return Server(
        Dispatcher(
            {
                "slow": Method(CapabilitiesParams, handlers.slow),
                "fast": Method(CapabilitiesParams, handlers.fast),
                "broken": Method(CapabilitiesParams, handlers.broken),
            }
        ),
        max_request_bytes=1 << 20,
    )


async def test_a_slow_request_does_not_hold_up_the_next_line() -> None:
    handlers = _Slow()
    async with in_process_worker(server=_test_server(handlers)) as worker:
        await worker.send(request("slow", id_="slow"))
        await worker.send(request("fast", id_="fast"))
        first, second = await worker.receive(), await worker.receive()
    assert [first["id"], second["id"]] == ["fast", "slow"]


async def test_an_unexpected_exception_is_internal_error_without_details() -> None:
    handlers = _Slow()
    async with in_process_worker(server=_test_server(handlers)) as worker:
        response = await worker.call("broken", id_=1)
        assert response["error"]["code"] == -32603
        assert "KeyError" in response["error"]["message"]
        assert "secret internal detail" not in str(response)
        assert "Traceback" not in str(response)
        assert "result" in await worker.call("fast", id_=2)


async def test_every_output_line_is_one_whole_json_value() -> None:
    async with in_process_worker() as worker:
        for index in range(50):
            await worker.send(request("capabilities", id_=index))
        ids = sorted([(await worker.receive())["id"] for _ in range(50)])
    assert ids == list(range(50))


async def test_a_result_that_cannot_be_written_is_internal_error_and_serving_goes_on() -> None:
    class NotJson(WireModel):
        value: float

    async def nan(context: RequestContext, params: CapabilitiesParams) -> WireModel:
        return NotJson(value=float("nan"))  # JSON has no NaN: encoding the answer fails

    server = Server(Dispatcher({"nan": Method(CapabilitiesParams, nan)}), max_request_bytes=1 << 20)
    async with in_process_worker(server=server) as worker:
        response = await worker.call("nan", id_=1)
        assert response["error"]["code"] == -32603 and response["id"] == 1
        second = await worker.call("nan", id_=2)
        assert second["error"]["code"] == -32603
