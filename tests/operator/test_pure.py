"""The operator's decisions as pure functions: no API server, no sleeps."""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json

import pytest
from crd_validation import check, pruned

from trail_contract.admin_api import ConfigUpdate, ConfigView, GuardView, ProbeInfo
from trail_contract.settings import SchedulerSettings
from trail_operator.apply import (
    LAST_APPLIED,
    OwnershipError,
    Write,
    holds,
    last_applied,
    merge_patch,
    needs_write,
    plan,
    removals,
    with_record,
)
from trail_operator.crd import openapi_schema
from trail_operator.events import build_event, lifecycle_events
from trail_operator.layout import CONTAINER_NAME, Owner
from trail_operator.owned import build_secret, secret_token
from trail_operator.pod import Images, build_deployment
from trail_operator.reconcile import (
    Desired,
    ProbeSourceError,
    backoff,
    desire,
    held_back,
    kept_token,
    probe_bytes,
    refusal,
)
from trail_operator.retune import PodReport, PodTarget, in_sync, ready_targets
from trail_operator.scheduler_settings import same_settings
from trail_operator.spec import SecretKeyRef, parse_spec
from trail_operator.status import Observation, compute_status

OWNER = Owner("s", "ml", "uid-1")
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


# --- apply: merge patches and the write plan -------------------------------------------


def test_merge_patch_nulls_dropped_keys_and_replaces_lists():
    last = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}
    desired = {"a": 1, "b": {"c": 5}, "l": [3]}
    assert merge_patch(last, desired) == {"a": 1, "b": {"c": 5, "d": None}, "l": [3]}
    assert merge_patch(None, {"x": {"y": 1}}) == {"x": {"y": 1}}


def configmap(data, owner_uid="uid-1"):
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ml"}, "data": data}
    live = with_record(obj)
    live["metadata"]["ownerReferences"] = [{"uid": owner_uid, "controller": True}]
    return obj, live


def test_needs_write_compares_with_what_was_applied_not_with_the_live_object():
    desired, live = configmap({"k": "v"})
    live["metadata"]["resourceVersion"] = "7"  # server-side fields do not matter
    live["status"] = {"anything": 1}
    assert not needs_write(live, desired)
    assert needs_write(live, {**desired, "data": {"k": "w"}})
    assert needs_write(None, desired)
    del live["metadata"]["annotations"][LAST_APPLIED]
    assert needs_write(live, desired)  # no record: write to take the object over


def test_plan_creates_missing_patches_changed_and_skips_unchanged():
    same, live_same = configmap({"k": "v"})
    old, live_old = configmap({"k": "v", "gone": "x"})
    changed = {**copy.deepcopy(old), "data": {"k": "w"}}
    missing = {**copy.deepcopy(same), "kind": "Secret"}
    writes = plan("uid-1", [same, changed, missing], [live_same, live_old, None])
    assert [(w.verb, w.kind) for w in writes] == [("patch", "ConfigMap"), ("create", "Secret")]
    patch = writes[0].body
    assert patch["data"] == {"k": "w", "gone": None}
    assert LAST_APPLIED in patch["metadata"]["annotations"]
    assert writes[1] == Write("create", "Secret", "cm", with_record(missing))


def test_plan_refuses_everything_when_one_object_is_someone_elses():
    mine, live_mine = configmap({"k": "v"})
    _, foreign = configmap({"k": "v"}, owner_uid="other")
    with pytest.raises(OwnershipError, match="not controlled by this LLMServer"):
        plan("uid-1", [{**mine, "data": {"k": "new"}}, mine], [live_mine, foreign])


def test_no_secret_value_in_any_annotation():
    """`kubectl describe secret` prints annotations: the record holds the token's hash only."""
    secret = with_record(build_secret(OWNER, "s3cret-token"))
    annotations = json.dumps(secret["metadata"]["annotations"])
    assert "s3cret-token" not in annotations
    assert base64.b64encode(b"s3cret-token").decode() not in annotations
    recorded = last_applied(secret)["data"]["token"]
    assert recorded == "sha256:" + hashlib.sha256(secret["data"]["token"].encode()).hexdigest()
    assert not needs_write(secret, build_secret(OWNER, "s3cret-token"))
    assert needs_write(secret, build_secret(OWNER, "another"))


def test_a_secret_is_replaced_never_patched():
    live = with_record(build_secret(OWNER, "old"))
    writes = plan(OWNER.uid, [build_secret(OWNER, "new")], [live])
    assert [(w.verb, w.kind) for w in writes] == [("delete", "Secret"), ("create", "Secret")]
    assert plan(OWNER.uid, [build_secret(OWNER, "old")], [live]) == []


def test_the_token_is_kept_only_while_the_secret_is_as_written():
    written = with_record(build_secret(OWNER, "tok"))
    assert kept_token(OWNER, written) == "tok"
    assert kept_token(OWNER, None) is None  # deleted
    edited = copy.deepcopy(written)
    edited["data"]["token"] = base64.b64encode(b"chosen-by-hand").decode()
    assert kept_token(OWNER, edited) is None
    legacy = copy.deepcopy(written)  # an older operator recorded the token in clear
    legacy["metadata"]["annotations"][LAST_APPLIED] = json.dumps(build_secret(OWNER, "tok"))
    assert kept_token(OWNER, legacy) is None
    emptied = {**copy.deepcopy(written), "data": {}}
    assert kept_token(OWNER, emptied) is None


def test_a_hand_edit_of_a_field_we_set_is_undone():
    spec = parse_spec(
        {
            "model": {"bundled": True},
            "resources": {"requests": {"cpu": "1000m", "memory": "4Gi"}},
            "engine": {"env": [{"name": "EMPTY", "value": ""}]},
        }
    )
    desired = build_deployment(OWNER, spec, Images())
    live = with_record(desired)
    # What the API server adds or rewrites is not an edit: defaults, status, canonical
    # quantities, empty strings left out (so the builders leave them out too).
    assert {"name": "EMPTY"} in desired["spec"]["template"]["spec"]["containers"][0]["env"]
    served = copy.deepcopy(live)
    served["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    served["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "1"
    served["status"] = {"replicas": 1}
    assert not needs_write(served, desired)
    for edit in (
        lambda d: d["spec"].update(replicas=5),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["args"].append("--enable-lora"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True
        ),
        lambda d: d["spec"]["template"]["spec"]["volumes"].pop(),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].update(cpu="2"),
    ):
        edited = copy.deepcopy(served)
        edit(edited)
        assert needs_write(edited, desired)
        (write,) = plan(OWNER.uid, [desired], [edited])
        assert write.verb == "patch" and holds(write.body["spec"], desired["spec"])


# --- reconcile: desired state from the spec and what exists ----------------------------


def test_desire_keeps_token_and_generation_until_the_settings_change(cpu_example):
    spec = parse_spec(cpu_example["spec"])
    first = desire(OWNER, spec, Images(), 1, {}, None)
    assert first.scheduler_generation == 1 and first.settings.generation == 1
    secret, *_ = first.objects
    assert secret_token(secret) == first.token
    live = [with_record(o) for o in first.objects]  # as the pass wrote them
    owned = {o["kind"]: o for o in live}

    again = desire(OWNER, spec, Images(), 5, owned, None)  # metadata.generation moved, settings did not
    assert (again.token, again.scheduler_generation) == (first.token, 1)
    assert plan(OWNER.uid, again.objects, live) == []

    edited = parse_spec({**cpu_example["spec"], "scheduler": {**cpu_example["spec"]["scheduler"], "c": 2.5}})
    bumped = desire(OWNER, edited, Images(), 5, owned, None)
    assert bumped.scheduler_generation == 5 and bumped.settings.c == 2.5
    writes = plan(OWNER.uid, bumped.objects, live)
    assert [w.kind for w in writes] == ["ConfigMap"]  # a c edit never touches the Deployment


def test_a_pass_validates_the_spec_settings_once(cpu_example, monkeypatch):
    """The generation and the inline probe are stamped on the one validated model."""
    probe = {"configMapKeyRef": {"name": "probes", "key": "p.bin"}}
    scheduler = {**cpu_example["spec"]["scheduler"], "probe": probe}
    spec = parse_spec({**cpu_example["spec"], "scheduler": scheduler})
    edited = parse_spec({**cpu_example["spec"], "scheduler": {**scheduler, "c": 2.5}})
    first = desire(OWNER, spec, Images(), 1, {}, b"probe")
    owned = {o["kind"]: o for o in first.objects}
    validated = []
    validate = SchedulerSettings.model_validate.__func__

    def counting(cls, data, **kwargs):
        validated.append(data)
        return validate(cls, data, **kwargs)

    monkeypatch.setattr(SchedulerSettings, "model_validate", classmethod(counting))  # every ConfigUpdate calls it
    fresh = desire(OWNER, edited, Images(), 2, {}, b"probe")
    assert len(validated) == 1
    assert (fresh.settings.generation, fresh.settings.c, fresh.settings.probe.data) == (2, 2.5, "cHJvYmU=")
    validated.clear()
    bumped = desire(OWNER, edited, Images(), 2, owned, b"probe")
    assert len(validated) == 2  # the stored file, read back, and the spec
    assert bumped.scheduler_generation == 2 and bumped.probe_sha == first.probe_sha


def test_settings_compare_the_knobs_alone():
    settings = SchedulerSettings(c=2.5).wire()
    view = ConfigView(**settings, generation=2, probe=None, effective_c=0.0, probe_failure="probe failed")
    assert same_settings(view, ConfigUpdate(**settings, generation=7))
    assert not same_settings(view, ConfigUpdate(**{**settings, "c": 0.8}))
    assert not same_settings(view, ConfigUpdate(c=2.5))  # an unset knob is None, not the pod's value


def test_refused_settings_are_remembered_until_the_settings_change():
    desired = Desired(objects=[], token="t", scheduler_generation=4, settings=ConfigUpdate(), probe_sha="ab")
    no = PodReport("p", "ip", synced=False, view={}, error="pod refused the settings (HTTP 422): bad", rejected=True)
    remembered = refusal(desired, [no], None)
    assert remembered == {"generation": 4, "probeSha256": "ab", "message": no.error}
    assert held_back({"status": {"refusedSettings": remembered}}, desired) == no.error
    edited = Desired(objects=[], token="t", scheduler_generation=5, settings=ConfigUpdate(), probe_sha="ab")
    assert held_back({"status": {"refusedSettings": remembered}}, edited) is None  # the spec changed
    assert held_back({"status": {}}, desired) is None
    yes = PodReport("p", "ip", synced=True, view={})
    assert refusal(desired, [yes], no.error) is None  # a pod took them after all
    assert refusal(desired, [], no.error) == remembered  # no pod to ask: still refused


def test_probe_bytes_from_binary_data_then_data():
    ref = SecretKeyRef(name="probes", key="p.bin")
    assert probe_bytes({"binaryData": {"p.bin": base64.b64encode(b"\x00\x01").decode()}}, ref, "ml") == b"\x00\x01"
    assert probe_bytes({"data": {"p.bin": "text"}}, ref, "ml") == b"text"
    with pytest.raises(ProbeSourceError, match="does not exist"):
        probe_bytes(None, ref, "ml")
    with pytest.raises(ProbeSourceError, match="no key 'p.bin'"):
        probe_bytes({"data": {"other": "x"}}, ref, "ml")
    with pytest.raises(ProbeSourceError, match="bad base64"):
        probe_bytes({"binaryData": {"p.bin": "not base64!"}}, ref, "ml")


def test_backoff_doubles_and_is_capped():
    assert [backoff(n) for n in range(3)] == [0.5, 1.0, 2.0]
    assert backoff(20) == 30.0


# --- retune: which pods, and when a pod runs the settings -------------------------------


def pod(name, ready=True, ip="10.0.0.1", admin=True, deleting=False):
    ports = [{"name": "http", "containerPort": 8000}] + ([{"name": "admin", "containerPort": 8001}] if admin else [])
    meta = {"name": name, **({"deletionTimestamp": "now"} if deleting else {})}
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": CONTAINER_NAME, "ports": ports}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_ready_targets_only_ready_addressed_admin_pods_sorted():
    pods = [
        pod("b"),
        pod("a", ip="10.0.0.2"),
        pod("not-ready", ready=False),
        pod("no-ip", ip=None),
        pod("no-admin", admin=False),
        pod("leaving", deleting=True),
    ]
    assert ready_targets(pods) == [PodTarget("a", "10.0.0.2", 8001), PodTarget("b", "10.0.0.1", 8001)]


def test_in_sync_needs_generation_settings_and_probe():
    settings = SchedulerSettings(policy="trail", c=2.5).wire()
    desired = ConfigUpdate(**settings, generation=2)
    probe = ProbeInfo(sha256="abc", layer=0, hidden_size=8, bins=[])
    view = ConfigView(**settings, generation=2, probe=probe)
    assert in_sync(view, desired, None) and in_sync(view, desired, "abc")
    assert not in_sync(view, desired, "def")
    assert not in_sync(view.model_copy(update={"generation": 1}), desired, None)
    assert not in_sync(view.model_copy(update={"c": 0.8}), desired, None)


# --- status ---------------------------------------------------------------------------


def deployment(ready, desired=1, generation=1, observed=1):
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": desired,
            "updatedReplicas": desired,
            "readyReplicas": ready,
        },
    }


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_of_a_ready_synced_server():
    report = PodReport("p", "10.0.0.1", synced=True, view={"generation": 3, "policy": "trail", "c": 2.5})
    obs = Observation(1, 1, deployment=deployment(1), reports=[report], scheduler_generation=3, endpoint="e")
    status = compute_status(obs, None, T0)
    assert conditions(status) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
        "SchedulerSynced": ("True", "AllPodsSynced"),
        "PredictionsTrusted": ("Unknown", "NotReported"),
    }
    assert status["pods"] == [
        {"name": "p", "ip": "10.0.0.1", "synced": True, "generation": 3, "policy": "trail", "c": 2.5}
    ]
    assert (status["readyReplicas"], status["schedulerGeneration"], status["endpoint"]) == (1, 3, "e")
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])


def test_status_explains_invalid_specs_apply_failures_and_rejections():
    invalid = compute_status(Observation(2, spec_error="spec.replicas: bad"), None, T0)
    assert conditions(invalid)["Degraded"] == ("True", "InvalidSpec")
    assert conditions(invalid)["SchedulerSynced"] == ("False", "InvalidSpec")
    failed = compute_status(Observation(2, 1, apply_error="boom"), None, T0)
    assert conditions(failed)["Progressing"] == ("False", "ApplyFailed")
    rejected = PodReport("p", "ip", synced=False, error="hidden size 64", rejected=True)
    obs = Observation(2, 1, deployment=deployment(1), reports=[rejected], scheduler_generation=2)
    status = compute_status(obs, None, T0)
    assert conditions(status)["Degraded"] == ("True", "SettingsRejected")
    assert conditions(status)["SchedulerSynced"] == ("False", "Rejected")
    assert "hidden size 64" in next(c for c in status["conditions"] if c["type"] == "Degraded")["message"]


def test_a_pod_whose_probe_failed_is_reported_and_degrades_the_llmserver():
    view = {"generation": 2, "policy": "trail", "c": 0.8, "probeFailure": "probe 0123 failed on the worker: OOM"}
    failed = PodReport("p", "ip", synced=True, view=view)
    obs = Observation(2, 1, deployment=deployment(1), reports=[failed], scheduler_generation=2)
    status = compute_status(obs, None, T0)
    assert conditions(status)["Degraded"] == ("True", "ProbeFailed")
    assert conditions(status)["SchedulerSynced"] == ("True", "AllPodsSynced")  # the settings are in force
    assert status["pods"][0]["probeFailure"] == view["probeFailure"]
    assert status["degradedPods"] == "p (probe-failed)"
    assert "pod p: probe 0123 failed" in next(c for c in status["conditions"] if c["type"] == "Degraded")["message"]


def guarded(name, enabled=True, level="trusting", correlation=0.61234, samples=64, **effective):
    """A pod whose ``GET /config`` reports its prediction guard, in the wire form the contract makes."""
    guard = GuardView(
        enabled=enabled,
        level=level,
        rank_correlation=correlation,
        prompt_rank_correlation=None if correlation is None else 0.4,
        pairs=0 if correlation is None else 900,
        regret_ratio=None if correlation is None else 0.6,
        samples=samples,
        min_samples=50,
        resolved_preemptions=0 if correlation is None else 16,
    )
    settings = SchedulerSettings(prediction_guard=enabled).wire()
    view = ConfigView(**settings, generation=2, probe=None, prediction_guard_state=guard, **effective)
    return PodReport(name, "ip", synced=True, view=view.model_dump(mode="json", by_alias=True))


def guarded_status(*reports):
    obs = Observation(2, len(reports), deployment=deployment(len(reports), len(reports)), reports=list(reports))
    return compute_status(obs, None, T0)


def test_a_pod_whose_guard_fell_back_is_named_with_its_measures_and_what_it_orders_by():
    weak = guarded("a", level="no-preemption", correlation=0.05123, effective_policy="trail", effective_c=0.0)
    status = guarded_status(weak, guarded("b", effective_policy="trail", effective_c=0.8))
    [predictions] = [c for c in status["conditions"] if c["type"] == "PredictionsTrusted"]
    assert (predictions["status"], predictions["reason"]) == ("False", "PredictionsWeak")
    assert predictions["message"] == (
        "predictions weak on this traffic: pod a: no-preemption "
        "(rank correlation 0.05 (first predictions), 0.40 (prompt estimates) over 64 finished requests, "
        "regret ratio 0.60 over 16)"
    )
    assert status["degradedPods"] == "a (no-preemption)"
    a, b = status["pods"]
    assert (a["policy"], a["c"], a["effectivePolicy"], a["effectiveC"]) == ("trail", 0.8, "trail", 0.0)
    assert a["predictionGuardState"] == {
        "enabled": True,
        "level": "no-preemption",
        "rankCorrelation": 0.05,
        "promptRankCorrelation": 0.4,
        "regretRatio": 0.6,
        "samples": 64,
        "minSamples": 50,
        "resolvedPreemptions": 16,
    }
    assert (b["effectiveC"], b["predictionGuardState"]["level"]) == (0.8, "trusting")


@pytest.mark.parametrize(
    ("pod", "expected", "said"),
    [
        (PodReport("p", "ip", synced=True, view={"generation": 2}), ("Unknown", "NotReported"), "no ready pod"),
        (
            guarded("p", enabled=False),
            ("Unknown", "GuardOff"),
            "pod p: rank correlation 0.61 (first predictions), 0.40",
        ),
        (
            guarded("p", correlation=None, samples=1),
            ("Unknown", "TooFewSamples"),
            "needs 50): pod p: rank correlation not measured over 1 finished requests, no preemption resolved",
        ),
        (guarded("p", samples=49), ("Unknown", "TooFewSamples"), "the guard needs 50"),
        (guarded("p"), ("True", "PredictionsTrusted"), "1/1 pods measured: pod p: rank correlation 0.61"),
        (guarded("p", level="arrival-order"), ("False", "PredictionsWeak"), "pod p: arrival-order (rank"),
    ],
    ids=["not-reported", "guard-off", "unmeasured", "too-few", "trusted", "arrival-order"],
)
def test_predictions_are_trusted_only_when_a_guard_on_has_measured_enough(pod, expected, said):
    [predictions] = [c for c in guarded_status(pod)["conditions"] if c["type"] == "PredictionsTrusted"]
    assert (predictions["status"], predictions["reason"]) == expected
    assert said in predictions["message"]


def test_every_status_field_the_operator_writes_is_declared_by_the_crd(cpu_example):
    """The API server drops undeclared fields without an error; kmock keeps them."""
    failed = PodReport("c", "ip", synced=True, view={**guarded("c").view, "probeFailure": "probe 0123 failed"})
    weak = guarded("a", level="arrival-order", effective_policy="fcfs", effective_c=0.8)
    status = guarded_status(weak, failed, PodReport("d", "ip", synced=False, error="unreachable"))
    written = {key: value for key, value in status.items() if value is not None}  # a merge patch's nulls remove
    assert written["degradedPods"] == "a (arrival-order), c (probe-failed)"
    assert check({**cpu_example, "status": written}) == []
    assert pruned(openapi_schema()["properties"]["status"], written, "status") == []


def test_last_transition_time_moves_only_when_a_condition_flips():
    rolling = compute_status(Observation(1, 1, deployment=deployment(0), scheduler_generation=1), None, T0)
    still = compute_status(Observation(1, 1, deployment=deployment(0), scheduler_generation=1), rolling, T1)
    ready = compute_status(Observation(1, 1, deployment=deployment(1), scheduler_generation=1), rolling, T1)
    stamp = {c["type"]: c["lastTransitionTime"] for c in still["conditions"]}
    assert set(stamp.values()) == {"2026-01-01T00:00:00Z"}
    flipped = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    assert flipped["Ready"] == "2026-01-01T00:05:00Z" and flipped["Degraded"] == "2026-01-01T00:00:00Z"


# --- events: what kubectl describe shows of a pass ----------------------------------------

READY = {"conditions": [{"type": "Ready", "status": "True"}], "readyReplicas": 2}
NOT_READY = {"conditions": [{"type": "Ready", "status": "False"}]}


def test_a_first_pass_posts_created_and_a_later_one_ready():
    created = [Write("create", kind, "demo", {}) for kind in ("Secret", "ConfigMap", "Deployment")]
    first = lifecycle_events(created, None, 2, 1, [], None, NOT_READY)
    assert first == [("Created", "created Secret, ConfigMap, Deployment")]
    assert lifecycle_events([], {"spec": {"replicas": 2}}, 2, 1, [], NOT_READY, READY) == [
        ("Ready", "2/2 replicas ready")
    ]
    assert lifecycle_events([], {"spec": {"replicas": 2}}, 2, 1, [], READY, READY) == []  # once per transition


def test_a_replica_change_posts_scaled_and_a_settings_change_retuned():
    live = {"spec": {"replicas": 2}}
    scaled = lifecycle_events([Write("patch", "Deployment", "demo", {})], live, 5, 1, [], READY, READY)
    assert scaled == [("Scaled", "Deployment scaled from 2 to 5 replicas")]
    engine_edit = lifecycle_events([Write("patch", "Deployment", "demo", {})], live, 2, 1, [], READY, READY)
    assert engine_edit == []  # a template change is not a scale
    reports = [PodReport("a", "ip", synced=True), PodReport("b", "ip", synced=False)]
    retuned = lifecycle_events([Write("patch", "ConfigMap", "demo-scheduler", {})], live, 2, 7, reports, READY, READY)
    assert retuned == [("Retuned", "scheduler settings generation 7: 1/2 ready pods run them")]


def test_an_event_names_its_llmserver_and_is_normal():
    server = {
        "apiVersion": "trail.dev/v1alpha1",
        "kind": "LLMServer",
        "metadata": {"name": "demo", "namespace": "ml", "uid": "u-1"},
    }
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    first, second = (build_event(server, "Scaled", "from 1 to 3", now) for _ in range(2))
    assert first["involvedObject"] == {**{k: server[k] for k in ("apiVersion", "kind")}, **server["metadata"]}
    assert (first["type"], first["reason"], first["message"]) == ("Normal", "Scaled", "from 1 to 3")
    assert first["lastTimestamp"] == "2026-01-02T03:04:05Z"
    assert first["metadata"]["name"].startswith("demo.") and first["metadata"]["name"] != second["metadata"]["name"]


def test_only_owned_objects_no_longer_wanted_are_removed():
    ours = {
        "kind": "InferencePool",
        "metadata": {"name": "demo", "ownerReferences": [{"uid": OWNER.uid, "controller": True}]},
    }
    theirs = {
        "kind": "InferencePool",
        "metadata": {"name": "demo", "ownerReferences": [{"uid": "x", "controller": True}]},
    }
    assert removals(OWNER.uid, [ours, None]) == [Write("delete", "InferencePool", "demo", {})]
    assert removals(OWNER.uid, [theirs]) == []
