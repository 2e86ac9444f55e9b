"""The admin API read as an attacker would: every hostile request gets a 4xx and changes nothing.

The app runs in-process (httpx's ASGI transport) on a fake engine that records every
call, so "changes nothing" is checked as "no apply reached the engine". This tests the
adapter as tests/engine_adapter/ does vLLM's scheduler; the real engine path (the RPC
into the scheduler, a real probe refused) is covered by tests/engine/test_serve.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trail_contract.admin_api import ConfigView
from trail_contract.settings import SETTING_KEYS, SchedulerSettings
from trail_scheduler.server.admin import AdminToken, build_admin_app
from trail_scheduler.server.probe_source import ProbeSources

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "http://admin/trail/v1/config"
SHA = "0" * 64


class FakeEngine:
    """Speaks the engine's utility-call protocol; refuses an older generation as the scheduler does."""

    def __init__(self) -> None:
        self.engine_core = self
        self.applied: list[tuple[dict, bytes | None]] = []
        self.generation = 5

    def config(self) -> dict:
        view = ConfigView(**SchedulerSettings().wire(), generation=self.generation, probe=None)
        return view.model_dump(mode="json", by_alias=True)

    async def call_utility_async(self, utility: str, method: str, *args):
        assert utility == "scheduler"
        if method == "apply":
            body, probe = args
            generation = body.get("generation")
            if generation is not None and generation < self.generation:
                return {"error": "generation is older than the one in force", "conflict": True}
            self.applied.append((body, probe))
            self.generation = self.generation + 1 if generation is None else generation
            return {"config": self.config()}
        assert method == "config"
        return self.config()


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def client(engine, token=None, sources=None, **limits) -> httpx.AsyncClient:
    app = build_admin_app(engine, token or AdminToken(TOKEN), sources or ProbeSources(), **limits)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=10)


async def put(engine, content=None, headers=AUTH, **kwargs) -> httpx.Response:
    async with client(engine, **kwargs) as http:
        if isinstance(content, dict | list) or content is None:
            return await http.put(URL, json=content, headers=headers)
        return await http.put(URL, content=content, headers=headers)


# -- token before body --------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
    ],
)
async def test_without_the_token_even_a_malformed_body_gets_401(engine, headers):
    reply = await put(engine, b'{"c": [[[[[', headers={**headers, "Content-Type": "application/json"})
    assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    assert engine.applied == []


async def test_two_authorization_headers_get_401(engine):
    async with client(engine) as http:
        request = http.build_request("PUT", URL, json={"c": 0.5})
        request.headers = httpx.Headers([("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer x")])
        assert (await http.send(request)).status_code == 401
    assert engine.applied == []


async def test_the_token_is_not_read_from_the_body_before_it_is_checked(engine):
    """A body the size of the cap without a token: refused before reading (no 413)."""
    reply = await put(engine, b"x" * (1024 * 1024), headers={}, max_body=1024)
    assert reply.status_code == 401


async def test_health_needs_no_token(engine):
    async with client(engine) as http:
        assert (await http.get("http://admin/health")).json() == {"status": "ok"}


# -- the token file -----------------------------------------------------------------


def kubernetes_secret(folder: Path, token: str, version: int) -> Path:
    """A Secret volume as the kubelet writes it: token -> ..data/token, ..data -> a dated folder,
    swapped atomically (rename of a new symlink) on rotation."""
    dated = folder / f"..2025_01_0{version}"
    dated.mkdir()
    (dated / "token").write_text(token + "\n")
    tmp = folder / "..data_tmp"
    tmp.symlink_to(dated.name)
    os.replace(tmp, folder / "..data")
    if not (folder / "token").is_symlink():
        (folder / "token").symlink_to("..data/token")
    return folder / "token"


async def test_a_rotated_secret_reaches_the_running_app(engine, tmp_path):
    path = kubernetes_secret(tmp_path, "first", 1)
    async with client(engine, token=AdminToken(path=path)) as http:
        assert (await http.get(URL, headers={"Authorization": "Bearer first"})).status_code == 200
        kubernetes_secret(tmp_path, "second", 2)
        assert (await http.get(URL, headers={"Authorization": "Bearer first"})).status_code == 401
        assert (await http.get(URL, headers={"Authorization": "Bearer second"})).status_code == 200


@pytest.mark.parametrize("state", ["empty", "blank", "missing", "a directory"])
async def test_an_empty_or_unreadable_token_file_lets_nobody_in(engine, tmp_path, state):
    path = tmp_path / "token"
    if state == "empty":
        path.write_text("")
    elif state == "blank":
        path.write_text("  \n")
    elif state == "a directory":
        path.mkdir()
    async with client(engine, token=AdminToken(path=path)) as http:
        for header in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
            assert (await http.get(URL, headers=header)).status_code == 401
    path.unlink(missing_ok=True) if state != "a directory" else path.rmdir()
    path.write_text("back")
    async with client(engine, token=AdminToken(path=path)) as http:
        assert (await http.get(URL, headers={"Authorization": "Bearer back"})).status_code == 200


# -- size and concurrency -----------------------------------------------------------


async def test_an_oversized_body_gets_413_from_content_length_and_from_chunks(engine):
    big = json.dumps({"probe": {"data": "A" * 2048}}).encode()
    assert (await put(engine, big, max_body=1024)).status_code == 413

    async def chunks():  # no Content-Length: chunked transfer
        for _ in range(100):
            yield b" " * 100

    reply = await put(engine, chunks(), max_body=1024)
    assert reply.status_code == 413 and "1024-byte limit" in reply.json()["detail"]
    assert engine.applied == []


async def test_a_chunked_body_under_the_cap_is_read_whole(engine):
    async def chunks():
        yield b'{"c": '
        yield b"0.25}"

    reply = await put(engine, chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert reply.status_code == 200 and engine.applied == [({"c": 0.25}, None)]


async def test_requests_beyond_the_concurrency_bound_get_503(engine):
    import asyncio

    gate = asyncio.Event()

    async def slow(utility, method, *args):
        await gate.wait()
        return FakeEngine.config(engine)

    engine.call_utility_async = slow
    async with client(engine, max_requests=2) as http:
        held = [asyncio.create_task(http.get(URL, headers=AUTH)) for _ in range(2)]
        await asyncio.sleep(0.05)
        third = await http.get(URL, headers=AUTH)
        gate.set()
        assert third.status_code == 503
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await http.get(URL, headers=AUTH)).status_code == 200  # the slots came back


# -- generation ---------------------------------------------------------------------


async def test_an_older_generation_gets_409_and_an_equal_one_is_accepted(engine):
    assert (await put(engine, {"c": 0.3, "generation": 4})).status_code == 409
    assert engine.applied == []
    assert (await put(engine, {"c": 0.3, "generation": 5})).status_code == 200


def test_the_scheduler_refuses_an_older_generation_as_a_conflict():
    """The engine side of the 409: checked before anything else in the scheduler's apply."""
    from types import SimpleNamespace

    from trail_contract.admin_api import ConfigUpdate
    from trail_scheduler.vllm.control_plane import ControlPlane

    control = SimpleNamespace(generation=7)
    reply = ControlPlane.apply(control, ConfigUpdate(c=0.1, generation=6))
    assert reply.conflict and "generation 6 is older than generation 7" in reply.error
    assert control.generation == 7


# -- hostile bodies: every one a 4xx naming the field, nothing applied -------------------

BIG = 2**64
HOSTILE_BODIES: dict[str, tuple[object, int, str]] = {
    # body (bytes are sent raw, anything else as JSON), status, part of the message
    "empty body": (b"", 422, "body"),
    "not JSON": (b"{c: 1}", 422, "JSON decode error"),
    "truncated JSON": (b'{"c": 0.', 422, "JSON decode error"),
    "JSON null": (b"null", 422, "body"),
    "a list": ([], 422, "valid dictionary"),
    "a string": (b'"c"', 422, "valid dictionary"),
    "a number": (b"1", 422, "valid dictionary"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, 400, "error parsing the body"),
    "deeply nested in a field": (b'{"c": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "error parsing the body"),
    "NaN literal": (b'{"c": NaN}', 422, "c must be a finite number"),
    "Infinity literal": (b'{"c": Infinity}', 422, "c must be a finite number"),
    "1e999": (b'{"c": 1e999}', 422, "c must be a finite number"),
    "not UTF-8": (b'{"c": "\xff"}', 400, "error parsing the body"),
    "unknown field": ({"d": 1}, 422, "d: Extra inputs are not permitted"),
    "both spellings of a name": ({"predictEvery": 0, "predict_every": 2}, 422, "Extra inputs are not permitted"),
    "c as a string": ({"c": "0.5"}, 422, "c must be a finite number"),
    "c as true": ({"c": True}, 422, "c must be a finite number"),
    "c negative": ({"c": -1}, 422, "c must be a finite number"),
    "c huge": ({"c": 1e308}, 422, "c must be a finite number"),
    "c over 2**64": ({"c": BIG}, 422, "c must be a finite number"),
    "policy unknown": ({"policy": "lifo"}, 422, "unknown policy"),
    "policy a number": ({"policy": 1}, 422, "unknown policy"),
    "policy unicode": ({"policy": "tráil"}, 422, "unknown policy"),
    "policy huge": ({"policy": "x" * 1_000_000}, 422, "unknown policy 'xxxxx"),
    "predictEvery 0": ({"predictEvery": 0}, 422, "predictEvery"),
    "predictEvery float": ({"predictEvery": 2.0}, 422, "predictEvery"),
    "predictEvery string": ({"predictEvery": "2"}, 422, "predictEvery"),
    "predictEvery true": ({"predictEvery": True}, 422, "predictEvery"),
    "predictEvery over 2**64": ({"predictEvery": BIG}, 422, "predictEvery"),
    "predictEvery over the maximum": ({"predictEvery": 1_000_001}, 422, "from 1 to 1000000"),
    "maxWaitSeconds negative": ({"maxWaitSeconds": -5}, 422, "maxWaitSeconds"),
    "maxWaitSeconds zero": ({"maxWaitSeconds": 0}, 422, "maxWaitSeconds"),
    "maxWaitSeconds huge": ({"maxWaitSeconds": 1e300}, 422, "up to 604800"),
    "maxWaitSeconds string": ({"maxWaitSeconds": "30"}, 422, "maxWaitSeconds"),
    "preemptionMargin negative": ({"preemptionMargin": -1}, 422, "preemptionMargin"),
    "preemptionMargin over 2**64": ({"preemptionMargin": BIG}, 422, "preemptionMargin"),
    "preemptionMargin null": ({"preemptionMargin": None}, 422, "preemptionMargin"),
    "evidenceWeight zero": ({"evidenceWeight": 0}, 422, "evidenceWeight"),
    "evidenceWeight above one": ({"evidenceWeight": 1.5}, 422, "above 0 and at most 1"),
    "evidenceWeight string": ({"evidenceWeight": "0.5"}, 422, "evidenceWeight"),
    "evidenceWeight null": ({"evidenceWeight": None}, 422, "evidenceWeight"),
    "probeRanksAfter negative": ({"probeRanksAfter": -1}, 422, "from 0 to 1000000 tokens"),
    "probeRanksAfter float": ({"probeRanksAfter": 8.0}, 422, "probeRanksAfter"),
    "probeRanksAfter string": ({"probeRanksAfter": "8"}, 422, "probeRanksAfter"),
    "probeRanksAfter null": ({"probeRanksAfter": None}, 422, "probeRanksAfter"),
    "probeRanksAfter over 2**64": ({"probeRanksAfter": BIG}, 422, "probeRanksAfter"),
    "preemptionByBenefit a string": ({"preemptionByBenefit": "false"}, 422, "must be true or false"),
    "preemptionByBenefit null": ({"preemptionByBenefit": None}, 422, "preemptionByBenefit"),
    "recomputeTokenCost negative": ({"recomputeTokenCost": -0.5}, 422, "from 0 to 1000"),
    "recomputeTokenCost Infinity": (b'{"recomputeTokenCost": Infinity}', 422, "from 0 to 1000"),
    "recomputeTokenCost a string": ({"recomputeTokenCost": "0.01"}, 422, "recomputeTokenCost"),
    "predictionGuard a string": ({"predictionGuard": "true"}, 422, "must be true or false"),
    "predictionGuard a number": ({"predictionGuard": 1}, 422, "predictionGuard"),
    "predictionGuard null": ({"predictionGuard": None}, 422, "predictionGuard"),
    "predictionGuardWindow below the minimum": ({"predictionGuardWindow": 9}, 422, "from 10 to 10000"),
    "predictionGuardWindow float": ({"predictionGuardWindow": 20.0}, 422, "predictionGuardWindow"),
    "predictionGuardWindow over 2**64": ({"predictionGuardWindow": BIG}, 422, "predictionGuardWindow"),
    "predictionGuardMinSamples one": ({"predictionGuardMinSamples": 1}, 422, "from 2 to 10000"),
    "predictionGuardMinSamples string": ({"predictionGuardMinSamples": "50"}, 422, "predictionGuardMinSamples"),
    "predictionGuardMinRankCorrelation below -1": ({"predictionGuardMinRankCorrelation": -1.5}, 422, "from -1 to 1"),
    "predictionGuardMinRankCorrelation NaN": (b'{"predictionGuardMinRankCorrelation": NaN}', 422, "from -1 to 1"),
    "predictionGuardMaxRegretRatio above 1": ({"predictionGuardMaxRegretRatio": 1.5}, 422, "from 0 to 1"),
    "predictionGuardMaxRegretRatio null": ({"predictionGuardMaxRegretRatio": None}, 422, "predictionGuardMax"),
    "predictionGuardHysteresis true": ({"predictionGuardHysteresis": True}, 422, "predictionGuardHysteresis"),
    "predictionGuardHysteresis negative": ({"predictionGuardHysteresis": -0.1}, 422, "from 0 to 2"),
    "maxPreemptions float": ({"maxPreemptions": 1.5}, 422, "maxPreemptions"),
    "maxPreemptions negative": ({"maxPreemptions": -1}, 422, "maxPreemptions"),
    "maxPreemptions over 2**64": ({"maxPreemptions": BIG}, 422, "maxPreemptions"),
    "maxPreemptions false": ({"maxPreemptions": False}, 422, "maxPreemptions"),
    "generation negative": ({"generation": -1}, 422, "generation"),
    "generation 2**63": ({"generation": 2**63}, 422, "generation"),
    "generation 2**64": ({"generation": BIG}, 422, "generation"),
    "generation string": ({"generation": "6"}, 422, "generation: Input should be a valid integer"),
    "generation true": ({"generation": True}, 422, "generation: Input should be a valid integer"),
    "generation float": ({"generation": 6.0}, 422, "generation"),
    "generation older": ({"generation": 3}, 409, "older"),
    "probe a string": ({"probe": "x"}, 422, "probe"),
    "probe empty": ({"probe": {}}, 422, "exactly one of probe.url"),
    "probe both sources": ({"probe": {"url": "http://h/p", "sha256": SHA, "data": "AAAA"}}, 422, "exactly one"),
    "probe url without sha256": ({"probe": {"url": "http://h/p"}}, 422, "needs probe.sha256"),
    "probe url a number": ({"probe": {"url": 5, "sha256": SHA}}, 422, "probe.url: Input should be a valid string"),
    "probe url with NUL": ({"probe": {"url": "http://h\x00/p", "sha256": SHA}}, 422, "probe.url"),
    "probe url bad port": ({"probe": {"url": "http://h:99999/p", "sha256": SHA}}, 422, "probe.url: url is malformed"),
    "probe url port 0": ({"probe": {"url": "http://h:0/p", "sha256": SHA}}, 422, "probe.url"),
    "probe url port text": ({"probe": {"url": "http://h:x/p", "sha256": SHA}}, 422, "probe.url"),
    "probe url non-ASCII host": ({"probe": {"url": "http://ünï.example/p", "sha256": SHA}}, 422, "probe.url"),
    "probe url space": ({"probe": {"url": "http://h/a b", "sha256": SHA}}, 422, "probe.url"),
    "probe url newline": ({"probe": {"url": "http://h/\r\nX: y", "sha256": SHA}}, 422, "probe.url"),
    "probe url bad IPv6": ({"probe": {"url": "http://[::1/p", "sha256": SHA}}, 422, "probe.url"),
    "probe url no host": ({"probe": {"url": "http:///p", "sha256": SHA}}, 422, "probe.url"),
    "probe url with user": ({"probe": {"url": "http://u:p@h/p", "sha256": SHA}}, 422, "probe.url"),
    "probe url ftp": ({"probe": {"url": "ftp://h/p", "sha256": SHA}}, 422, "probe.url"),
    "probe url javascript": ({"probe": {"url": "javascript:alert(1)", "sha256": SHA}}, 422, "probe.url"),
    "probe url file with host": ({"probe": {"url": "file://h/etc/passwd", "sha256": SHA}}, 422, "probe.url"),
    "probe url too long": ({"probe": {"url": "http://h/" + "a" * 3000, "sha256": SHA}}, 422, "probe.url"),
    "probe sha256 short": ({"probe": {"url": "http://h/p", "sha256": "abc"}}, 422, "probe.sha256"),
    "probe sha256 a number": ({"probe": {"url": "http://h/p", "sha256": 1}}, 422, "probe.sha256"),
    "probe sha256 huge": ({"probe": {"url": "http://h/p", "sha256": "0" * 100_000}}, 422, "probe.sha256"),
    "probe data not base64": ({"probe": {"data": "not base64!"}}, 422, "not valid base64"),
    "probe data a list": ({"probe": {"data": [1]}}, 422, "probe.data"),
    "probe data empty": ({"probe": {"data": ""}}, 422, "probe.data: String should have at least 1 character"),
    "probe data wrong sha256": ({"probe": {"data": "AAAA", "sha256": SHA}}, 422, "does not match probe.sha256"),
    "probe extra field": ({"probe": {"data": "AAAA", "x": 1}}, 422, "probe.x"),
    "file url, no --probe-dir": ({"probe": {"url": "file:///etc/passwd", "sha256": SHA}}, 422, "--probe-dir"),
}


@pytest.mark.parametrize("case", HOSTILE_BODIES)
async def test_hostile_bodies_get_a_4xx_with_the_reason_and_change_nothing(engine, case):
    body, status, message = HOSTILE_BODIES[case]
    reply = await put(engine, body, headers={**AUTH, "Content-Type": "application/json"})
    assert (reply.status_code, engine.applied) == (status, [])
    assert message in reply.json()["detail"]
    assert len(reply.text) < 2000  # no echo of a megabyte of input


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/xml"]
)
async def test_a_body_that_is_not_declared_json_is_refused(engine, content_type):
    reply = await put(engine, b'{"c": 0.5}', headers={**AUTH, "Content-Type": content_type})
    assert 400 <= reply.status_code < 500 and engine.applied == []


async def test_a_probe_that_fails_unexpectedly_is_a_4xx_and_logged(engine, caplog):
    class Broken(ProbeSources):
        async def fetch(self, source):
            raise RuntimeError("boom")

    reply = await put(engine, {"probe": {"data": "AAAA"}}, sources=Broken())
    assert reply.status_code == 422 and "could not be fetched or checked" in reply.json()["detail"]
    assert "boom" not in reply.text and "fetching a probe failed unexpectedly" in caplog.text
    assert engine.applied == []


async def test_a_valid_change_reaches_the_engine_once(engine):
    data = base64.b64encode(b"probe bytes").decode()
    sha = hashlib.sha256(b"probe bytes").hexdigest()
    reply = await put(engine, {"c": 0.5, "probe": {"data": data, "sha256": sha.upper()}})
    assert reply.status_code == 200 and engine.applied == [({"c": 0.5}, b"probe bytes")]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from([*SETTING_KEYS, "generation", "probe"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(FIELDS | st.text(max_size=8), JSON_VALUES, max_size=4) | JSON_VALUES)
async def test_no_body_gets_a_5xx(body):
    engine = FakeEngine()
    raw = json.dumps(body).encode()  # NaN and Infinity too, as Python writes them
    reply = await put(engine, raw, headers={**AUTH, "Content-Type": "application/json"})
    assert reply.status_code < 500, reply.text
    assert (reply.status_code == 200) == (len(engine.applied) == 1)
