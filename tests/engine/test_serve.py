"""`trail serve` end to end: a real vLLM CPU engine with the TRAIL scheduler."""

from __future__ import annotations

import base64
import concurrent.futures
import json

import httpx
import pytest

from tests.streaming import Streamed, stream_completion
from trail_contract.admin_client import AdminError
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import LengthProbe, save_probe

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"


def chat(server, content: str, max_tokens: int = 40, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    return httpx.post(f"{server.base}/v1/chat/completions", json=body, timeout=300)


def test_chat_answers_with_sensible_text(trail_server):
    reply = chat(trail_server, "What is the capital of France? Answer in one sentence.", temperature=0)
    assert reply.status_code == 200, reply.text
    assert "paris" in reply.json()["choices"][0]["message"]["content"].lower()


def test_the_log_says_which_of_vllms_scheduler_classes_runs_trail(trail_server):
    # The CPU platform turns async scheduling off; on GPU the same line names AsyncScheduler.
    assert "TRAIL scheduling on vLLM's Scheduler (async scheduling False)" in trail_server.log.read_text()


def test_streaming_chat_delivers_tokens_incrementally(trail_server):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Give three tips for staying healthy."}],
        "max_tokens": 48,
        "stream": True,
        "temperature": 0,
    }
    pieces = []
    with httpx.stream("POST", f"{trail_server.base}/v1/chat/completions", json=body, timeout=300) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    text = "".join(pieces)
    assert len([p for p in pieces if p]) > 10
    assert any(word in text.lower() for word in ("water", "exercise", "sleep", "diet", "healthy"))


def test_completions_endpoint_works(trail_server):
    body = {"model": MODEL, "prompt": "The sky is", "max_tokens": 8, "temperature": 0}
    reply = httpx.post(f"{trail_server.base}/v1/completions", json=body, timeout=300)
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"].strip()


def test_too_long_prompt_and_bad_body_get_4xx_and_serving_continues(trail_server):
    too_long = chat(trail_server, "hello " * 5000)
    assert too_long.status_code == 400
    assert "context" in too_long.text.lower() or "length" in too_long.text.lower()
    bad = httpx.post(f"{trail_server.base}/v1/chat/completions", json={"model": MODEL, "messages": "nope"}, timeout=60)
    assert 400 <= bad.status_code < 500
    assert chat(trail_server, "Say hi.", max_tokens=4).status_code == 200


# -- admin API --------------------------------------------------------------------


def test_admin_api_requires_the_token(trail_server):
    assert httpx.get(f"{trail_server.admin}/trail/v1/config").status_code == 401
    wrong = httpx.get(f"{trail_server.admin}/trail/v1/config", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.put(f"{trail_server.admin}/trail/v1/config", json={"c": 0.1}).status_code == 401


def _probe_bytes(tmp_path, hidden_size: int, layer: int = 10) -> bytes:
    path = tmp_path / f"probe-{hidden_size}.safetensors"
    save_probe(LengthProbe(hidden_size, 10), LengthBins.uniform(), path, model="test", layer=layer, training={})
    return path.read_bytes()


def _in_force(view):
    """What a refused change must leave as it was: the settings, their generation and the
    probe; the prediction guard's measures move on as requests finish."""
    return view.model_copy(update={"prediction_guard_state": None})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"c": -1}, "c must be a finite number"),
        ({"c": "inf"}, "c must be a finite number"),
        ({"policy": "lifo"}, "policy"),
        ({"predictEvery": 0}, "predictEvery"),
        ({"maxWaitSeconds": -5}, "maxWaitSeconds"),
        ({"probe": {"data": "not base64!"}}, "base64"),
        ({"probe": {"data": base64.b64encode(b"corrupt bytes").decode()}}, "probe rejected"),
        ({"probe": {"url": "file:///nonexistent.safetensors", "sha256": "0" * 64}}, "--probe-dir"),
    ],
)
def test_bad_changes_are_rejected_and_old_settings_stay(trail_server, change, message):
    before = trail_server.configure(policy="trail", c=0.8)
    with pytest.raises(AdminError) as refused:
        trail_server.configure(**change)
    assert refused.value.refused and message in refused.value.detail
    assert _in_force(trail_server.config()) == _in_force(before)


def test_probe_for_another_hidden_size_is_rejected(trail_server, tmp_path):
    before = trail_server.configure(c=0.8)
    data = base64.b64encode(_probe_bytes(tmp_path, hidden_size=64)).decode()
    with pytest.raises(AdminError) as refused:
        trail_server.configure(c=0.3, probe={"data": data})
    assert refused.value.status == 422
    assert "hidden size 64" in refused.value.detail and "576" in refused.value.detail
    assert _in_force(trail_server.config()) == _in_force(before)  # c stayed 0.8 too


def test_changing_settings_while_requests_stream_loses_none(trail_server):
    trail_server.configure(policy="trail", c=0.8, predictEvery=1)

    def stream(i: int) -> Streamed:
        body = {
            "model": MODEL,
            "prompt": f"Count to twenty: {i},",
            "max_tokens": 40,
            "temperature": 0,
            "ignore_eos": True,
        }
        return stream_completion(f"{trail_server.base}/v1/completions", body)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(stream, i) for i in range(6)]
        for change in (
            {"c": 0.0},
            {"policy": "sjf"},
            {"c": 5.0, "policy": "trail"},
            {"predictEvery": 2},
            {"policy": "fcfs"},
        ):
            trail_server.configure(**change)
        counts = [f.result() for f in futures]
    assert all(done.tokens == 40 and done.finish == "length" for done in counts), counts


# -- limited preemption, counted by vLLM's own metric ---------------------------------


def _long_then_short(server) -> float:
    """Two long requests fill the 2-sequence batch, then four short ones arrive.

    Returns how many preemptions vLLM counted meanwhile.
    """
    before = server.metric("vllm:num_preemptions_total")

    def send(max_tokens: int, estimate: int):
        body = {
            "model": MODEL,
            "prompt": "Write a long story about a dragon.",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "vllm_xargs": {"trail_prompt_estimate": estimate},
        }
        return httpx.post(f"{server.base}/v1/completions", json=body, timeout=300)

    import time

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        longs = [pool.submit(send, 160, 400) for _ in range(2)]
        time.sleep(1.5)  # both long ones are decoding
        shorts = [pool.submit(send, 4, 4) for _ in range(4)]
        results = [f.result() for f in longs + shorts]
    assert all(r.status_code == 200 for r in results)
    assert [r.json()["usage"]["completion_tokens"] for r in results] == [160, 160, 4, 4, 4, 4]
    time.sleep(1.5)  # the API server's stat logger catches up
    return server.metric("vllm:num_preemptions_total") - before


def test_large_c_preempts_young_long_requests_for_short_ones(trail_server):
    """The real engine's end of what tests/engine_adapter shows in-process for both of vLLM's
    scheduler classes (c = 0 and FCFS never preempting are shown only there)."""
    trail_server.configure(policy="trail", c=100.0, maxWaitSeconds=None)
    resumed = ("trail_resumed_tokens_total", "prefix_cache"), ("trail_resumed_tokens_total", "recomputed")
    before = [trail_server.metric(name, source=source) for name, source in resumed]
    ages = "trail_preempted_generated_tokens_count", "trail_preempted_generated_tokens_sum"
    ages_before = [trail_server.metric(name, reason="policy") for name in ages]
    # Each long request is displaced once and waits until the short ones are done; a victim
    # that vLLM resumed at once would be displaced again every step (dozens).
    preemptions = _long_then_short(trail_server)
    assert 1 <= preemptions <= 2
    # Each victim rebuilt its prompt (8 tokens) and the tokens it had generated, from the
    # prefix cache or by recomputing; at least its last token is always recomputed.
    cached, recomputed = (trail_server.metric(name, source=source) - b for (name, source), b in zip(resumed, before))
    assert recomputed >= preemptions and cached + recomputed > preemptions * 8, (cached, recomputed)
    # Each was decoding when it was displaced: counted once, with the tokens it had.
    count, total = (trail_server.metric(name, reason="policy") - b for name, b in zip(ages, ages_before))
    assert count == preemptions and total >= preemptions, (count, total)


def _finish_order_of_a_long_request_among_short_ones(server) -> tuple[int, float]:
    """Two requests fill the batch; a long-predicted one queues, then six short-predicted ones.

    Returns how many short requests finished before the long one, and how many
    admissions the starvation guard made meanwhile (``trail_requests{decision="promote"}``).
    """
    import time

    before = server.metric("trail_requests_total", decision="promote")
    finished: dict[str, float] = {}

    def send(name: str, max_tokens: int, estimate: int) -> None:
        body = {
            "model": MODEL,
            "prompt": "Write a long story about a dragon.",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "vllm_xargs": {"trail_prompt_estimate": estimate},
        }
        reply = httpx.post(f"{server.base}/v1/completions", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        finished[name] = time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(send, f"blocker{i}", 120, 120) for i in range(2)]
        time.sleep(1.0)  # both are decoding
        futures.append(pool.submit(send, "long", 8, 1000))
        time.sleep(0.3)
        futures += [pool.submit(send, f"short{i}", 30, 5) for i in range(6)]
        for future in futures:
            future.result()
    time.sleep(1.5)  # the API server drains the engine's counters every second
    shorts_first = sum(finished[f"short{i}"] < finished["long"] for i in range(6))
    return shorts_first, server.metric("trail_requests_total", decision="promote") - before


def test_the_starvation_guard_promotes_a_long_waiting_request(trail_server):
    # Without the guard shortest-first serves every short request before the long one.
    trail_server.configure(policy="trail", c=0.0, maxWaitSeconds=None)
    shorts_first, promoted = _finish_order_of_a_long_request_among_short_ones(trail_server)
    assert (shorts_first, promoted) == (6, 0)
    # With a 1 s bound, by the time the blockers' 120 tokens are done everyone has waited
    # too long: the oldest, the long request, goes first and overtakes all six.
    trail_server.configure(policy="trail", c=0.0, maxWaitSeconds=1.0)
    shorts_first, promoted = _finish_order_of_a_long_request_among_short_ones(trail_server)
    assert promoted >= 1 and shorts_first == 0, (shorts_first, promoted)
    trail_server.configure(maxWaitSeconds=None)


# -- predictions from the model's hidden states --------------------------------------


def test_probe_predictions_flow_and_beat_the_unknown_length_guess(trail_server, tmp_path):
    from tests.engine.quick_probe import train_quick_probe

    path = tmp_path / "quick.safetensors"
    sha, prompts = train_quick_probe(path)  # and serves its own prompts: the flow, not generalisation
    config = trail_server.configure(
        policy="trail",
        c=0.8,
        predictEvery=1,
        probe={"data": base64.b64encode(path.read_bytes()).decode(), "sha256": sha},
    )
    assert config.probe.sha256 == sha

    def errors(stage: str) -> tuple[float, float]:
        return (
            trail_server.metric("trail_prediction_abs_error_tokens_sum", stage=stage),
            trail_server.metric("trail_prediction_abs_error_tokens_count", stage=stage),
        )

    before = {stage: errors(stage) for stage in ("prompt", "first", "refined")}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda text: chat(trail_server, text, max_tokens=96, temperature=0), prompts))
    import time

    time.sleep(2.5)  # the metrics poller drains the engine every second
    mean = {}
    for stage, (total, count) in before.items():
        new_total, new_count = errors(stage)
        assert new_count - count == len(prompts), stage
        mean[stage] = (new_total - total) / (new_count - count)
    # The prompt stage is the unknown-length guess here (no prompt predictor yet).
    assert mean["refined"] < mean["prompt"], mean
    assert mean["first"] < mean["prompt"], mean


def test_valid_change_is_visible_and_versioned(trail_server, tmp_path):
    # Here, with the tests that load probes: an untrained probe reaches the workers with the
    # next step and would steer the preemption tests above (a probe cannot be unloaded).
    data = _probe_bytes(tmp_path, hidden_size=576)
    config = trail_server.configure(
        c=1.5, predictEvery=4, maxWaitSeconds=30, generation=42, probe={"data": base64.b64encode(data).decode()}
    )
    assert (config.c, config.predict_every, config.max_wait_seconds, config.generation) == (1.5, 4, 30, 42)
    assert config.probe.hidden_size == 576 and config.probe.layer == 10
    import hashlib

    assert config.probe.sha256 == hashlib.sha256(data).hexdigest()
    assert _in_force(trail_server.config()) == _in_force(config)
    stats = trail_server.stats()
    assert stats.policy == "trail" and stats.num_running == 0
    assert trail_server.metric("trail_setting_c") == 1.5


def test_a_probe_reaches_the_workers_when_a_settings_change_follows_it_on_an_idle_engine(trail_server, tmp_path):
    """Changes wait for the next engine step; a settings-only PUT right after a probe PUT
    once replaced the pending probe, and the workers kept the old one while GET /config
    reported the new one."""
    import base64

    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.probe import LengthProbe, save_probe

    path = tmp_path / "fresh.safetensors"
    sha = save_probe(
        LengthProbe(576, 10),
        LengthBins.uniform(),
        path,
        model="SmolLM2-135M-Instruct",
        layer=10,
        training={"recipe": "untrained, for this test"},
    )
    loaded = trail_server.configure(policy="trail", probe={"data": base64.b64encode(path.read_bytes()).decode()})
    assert loaded.probe.sha256 == sha
    trail_server.configure(c=0.7)  # before any step could carry the probe to the workers
    chat(trail_server, "Say hi.", max_tokens=4)
    assert trail_server.stats().worker_probe_sha256 == sha


# -- hostile input, on the real engine ------------------------------------------------


def _safetensors(header: bytes) -> str:
    """A probe file of only a (hostile) header, base64 for ``probe.data``."""
    return base64.b64encode(len(header).to_bytes(8, "little") + header).decode()


HOSTILE_ADMIN = [  # (what, body or raw bytes, with the token?)
    ("malformed JSON, no token", b"{not json", False),
    ("10 MB body, no token", b"[" + b"1," * 5_000_000 + b"1]", False),
    ("deeply nested JSON", b"[" * 100_000 + b"]" * 100_000, True),
    ("a body over the 8 MiB cap", b'{"c": 0.5, "x": "' + b"a" * (9 << 20) + b'"}', True),
    ("predictEvery 2**64", {"predictEvery": 2**64}, True),
    ("generation 2**64", {"generation": 2**64}, True),
    ("c as a string", {"c": "0.5"}, True),
    ("generation as a boolean", {"generation": True}, True),
    ("an unknown field", {"cc": 1}, True),
    ("a list, not an object", [1, 2], True),
    ("metadata address", {"probe": {"url": "http://169.254.169.254/latest/meta-data", "sha256": "0" * 64}}, True),
    ("a NUL byte in the URL", {"probe": {"url": "http://exa\x00mple.com/p", "sha256": "0" * 64}}, True),
    ("a local file outside the probe dirs", {"probe": {"url": "file:///etc/passwd", "sha256": "0" * 64}}, True),
    (
        "a probe header nested 10,000 deep",
        {"probe": {"data": _safetensors(b'{"a":' * 10_000 + b"1" + b"}" * 10_000)}},
        True,
    ),
    (
        "a probe header with 2**64 offsets",
        {"probe": {"data": _safetensors(b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}}')}},
        True,
    ),
    ("a probe with a truncated header", {"probe": {"data": base64.b64encode(b"\xff" * 8 + b"{").decode()}}, True),
]


def test_hostile_admin_and_api_input_gets_4xx_and_loses_no_request(trail_server):
    """Hostile input on both ports while requests stream: every answer a 4xx, every stream
    complete, the settings untouched, the engine still serving."""
    generation = trail_server.config().generation + 10
    before = trail_server.configure(policy="trail", c=0.8, generation=generation)
    url = f"{trail_server.admin}/trail/v1/config"
    auth = {"Authorization": f"Bearer {trail_server.token}"}

    def stream(i: int) -> Streamed:
        body = {"model": MODEL, "prompt": f"Count: {i},", "max_tokens": 30, "ignore_eos": True}
        return stream_completion(f"{trail_server.base}/v1/completions", body)

    statuses: dict[str, int] = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(stream, i) for i in range(4)]
        for what, body, with_token in HOSTILE_ADMIN:
            headers = {"Content-Type": "application/json", **(auth if with_token else {})}
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            statuses[what] = httpx.put(url, content=content, headers=headers, timeout=120).status_code
        statuses["an older generation"] = httpx.put(
            url, json={"c": 0.1, "generation": generation - 1}, headers=auth
        ).status_code
        statuses["a form, not JSON"] = httpx.put(url, data={"c": "0.1"}, headers=auth).status_code
        api = f"{trail_server.base}/v1/chat/completions"
        statuses["API: negative max_tokens"] = httpx.post(
            api, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, timeout=60
        ).status_code
        statuses["API: malformed JSON"] = httpx.post(
            api, content=b"{nope", headers={"Content-Type": "application/json"}, timeout=60
        ).status_code
        statuses["API: unknown model"] = httpx.post(
            api, json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, timeout=60
        ).status_code
        counts = [f.result() for f in streams]
    not_4xx = {what: status for what, status in statuses.items() if not 400 <= status < 500}
    assert not not_4xx, not_4xx
    assert statuses["malformed JSON, no token"] == 401 and statuses["10 MB body, no token"] == 401
    assert statuses["a body over the 8 MiB cap"] == 413 and statuses["an older generation"] == 409
    assert [(done.tokens, done.finish) for done in counts] == [(30, "length")] * 4  # none lost or cut short
    assert _in_force(trail_server.config()) == _in_force(before)
    assert chat(trail_server, "Say hi.", max_tokens=4).status_code == 200


def test_a_seeded_request_with_a_prompt_prefilled_in_chunks_is_served_and_repeats(trail_server):
    """vLLM 0.32 on CPU died here (its rewind of the request's generator after a chunk): a
    client's ``seed`` and a long prompt must not take the engine and its requests down."""
    long_prompt = "Summarise in one line: " + "the quick brown fox jumps over the lazy dog. " * 150  # ~1,500 tokens
    seeded = {"temperature": 0.8, "top_p": 0.9, "seed": 7}
    first = chat(trail_server, long_prompt, max_tokens=8, **seeded)
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["prompt_tokens"] > 1024  # more than one step's token budget
    again = chat(trail_server, long_prompt, max_tokens=8, **seeded)
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]  # the seed still holds
    assert chat(trail_server, "Say hi.", max_tokens=4).status_code == 200
