"""The admin API's client on its own: what goes on the wire, and how replies map to results and errors."""

from __future__ import annotations

import json

import httpx
import pytest

from trail_contract.admin_api import ConfigUpdate, ConfigView, StatsView
from trail_contract.admin_client import AdminClient, AdminError

VIEW = {"policy": "trail", "c": 0.8, "predictEvery": 1, "generation": 3, "probe": None}
STATS = {
    "policy": "trail",
    "numRunning": 1,
    "numWaiting": 0,
    "running": [{"requestId": "r1", "generatedTokens": 5, "predictedRemaining": 12.5, "preemptions": 2}],
    "waiting": [],
    "preemptionsTotal": 2,
}


def client_for(handler, **kwargs) -> AdminClient:
    transport = httpx.MockTransport(handler)
    return AdminClient("http://pod:8001/", "secret", client=httpx.AsyncClient(transport=transport), **kwargs)


async def test_reads_and_writes_the_wire_models_with_the_token():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.headers["Authorization"], request.content))
        if request.url.path.endswith("/stats"):
            return httpx.Response(200, json=STATS)
        body = json.loads(request.content) if request.content else {}
        return httpx.Response(200, json={**VIEW, **body})

    admin = client_for(handler)
    assert await admin.config() == ConfigView.model_validate(VIEW)
    updated = await admin.update(ConfigUpdate(c=2.5, max_wait_seconds=None))
    assert (updated.c, updated.max_wait_seconds) == (2.5, None)
    assert (await admin.update({"policy": "sjf"})).policy == "sjf"
    stats = await admin.stats()
    assert isinstance(stats, StatsView) and stats.running[0].preemptions == 2
    assert [(m, u, t) for m, u, t, _ in seen] == [
        ("GET", "http://pod:8001/trail/v1/config", "Bearer secret"),
        ("PUT", "http://pod:8001/trail/v1/config", "Bearer secret"),
        ("PUT", "http://pod:8001/trail/v1/config", "Bearer secret"),
        ("GET", "http://pod:8001/trail/v1/stats", "Bearer secret"),
    ]
    # A model is sent as the wire spells it, only the fields given (an explicit null included).
    assert json.loads(seen[1][3]) == {"c": 2.5, "maxWaitSeconds": None}


async def test_a_refusal_carries_the_status_and_the_servers_reason_and_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(422, json={"detail": "invalid settings: c: too big"})

    admin = client_for(handler, attempts=3, base_delay=0)
    with pytest.raises(AdminError) as refused:
        await admin.update({"c": 5000})
    assert refused.value.refused and refused.value.status == 422
    assert refused.value.detail == "invalid settings: c: too big"
    assert str(refused.value) == "HTTP 422: invalid settings: c: too big"
    assert len(calls) == 1


async def test_server_errors_and_network_errors_are_retried_then_reported():
    replies = iter([httpx.Response(503, text="starting"), httpx.Response(200, json=VIEW)])
    assert (await client_for(lambda request: next(replies), attempts=2, base_delay=0).config()).generation == 3

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(AdminError) as unreachable:
        await client_for(down, attempts=3, base_delay=0).stats()
    assert str(unreachable.value) == "admin API unreachable after 3 attempts (ConnectError: connection refused)"
    assert unreachable.value.status is None and not unreachable.value.refused

    with pytest.raises(AdminError) as failing:
        await client_for(lambda request: httpx.Response(500, json={"detail": "boom"})).config()
    assert str(failing.value) == "admin API unreachable (HTTP 500: boom)" and not failing.value.refused


async def test_a_reply_that_is_not_the_wire_model_is_a_value_error():
    admin = client_for(lambda request: httpx.Response(200, json={"policy": "trail"}))
    with pytest.raises(ValueError):
        await admin.config()
