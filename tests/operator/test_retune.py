"""Live retune against a stand-in admin API (httpx.MockTransport): read first, write only
what differs, retry what may pass, report what a pod refuses."""

from __future__ import annotations

import json

import httpx

from trail_contract.admin_api import ConfigUpdate
from trail_contract.settings import SchedulerSettings
from trail_operator.retune import PodTarget, RetuneClient

TARGET = PodTarget("pod-0", "10.0.0.7", 8001)
DESIRED = ConfigUpdate(**SchedulerSettings(c=2.0).wire(), generation=5)


def pod(view: dict, put=None):
    """A pod answering GET with ``view`` and PUT with ``put(body)`` (default: accept); records the calls."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, str(request.url), request.headers.get("Authorization")))
        if request.method == "GET":
            return view if isinstance(view, httpx.Response) else httpx.Response(200, json=view)
        body = json.loads(request.content)
        return put(body) if put else httpx.Response(200, json={**view, **body})

    return RetuneClient(httpx.AsyncClient(transport=httpx.MockTransport(handler)), base_delay=0), calls


def view_of(settings: dict) -> dict:
    return {**settings, "probe": None}


async def test_a_pod_in_sync_gets_no_put():
    client, calls = pod(view_of(DESIRED.model_dump(mode="json", by_alias=True)))
    report = await client.sync_pod(TARGET, "tok", DESIRED, None)
    assert report.synced and report.view["generation"] == 5
    assert calls == [("GET", "http://10.0.0.7:8001/trail/v1/config", "Bearer tok")]


async def test_a_pod_behind_is_written_and_reports_what_it_runs():
    client, calls = pod(view_of({**SchedulerSettings().wire(), "generation": 4}))
    report = await client.sync_pod(TARGET, "tok", DESIRED, None)
    assert report.synced and report.view["c"] == 2.0 and not report.error
    assert [method for method, _, _ in calls] == ["GET", "PUT"]


async def test_a_refusal_is_reported_with_the_pods_reason_and_not_retried():
    client, calls = pod(
        view_of({**SchedulerSettings().wire(), "generation": 4}),
        put=lambda body: httpx.Response(422, json={"detail": "probe rejected: hidden size 64"}),
    )
    report = await client.sync_pod(TARGET, "tok", DESIRED, None)
    assert report.rejected and not report.synced and report.view["generation"] == 4
    assert report.error == "pod refused the settings (HTTP 422): probe rejected: hidden size 64"
    assert len(calls) == 2


async def test_server_errors_are_retried_then_reported_as_unreachable():
    client, calls = pod(httpx.Response(503, json={"detail": "engine busy"}))
    report = await client.sync_pod(TARGET, "tok", DESIRED, None)
    assert not report.synced and not report.rejected and report.view is None
    assert report.error == "admin API unreachable after 4 attempts (HTTP 503: engine busy)"
    assert len(calls) == 4


async def test_a_wrong_token_is_reported_at_the_read():
    client, _ = pod(httpx.Response(401, json={"detail": "missing or wrong bearer token"}))
    report = await client.sync_pod(TARGET, "bad", DESIRED, None)
    assert report.error == "GET config: HTTP 401: missing or wrong bearer token" and not report.rejected
