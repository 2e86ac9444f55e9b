"""The server pods pass Pod Security "restricted" (what a namespace labelled
``pod-security.kubernetes.io/enforce: restricted`` admits), checked by a pure function
that lists the violations of the profile's rules, as the Pod Security admission does
(Kubernetes' Pod Security Standards, "Baseline" and "Restricted", latest version)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from conftest import EXAMPLES, load

from trail_operator.layout import Owner
from trail_operator.pod import Images, build_deployment
from trail_operator.spec import parse_spec

OWNER = Owner("demo", "ml", "uid-1")
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every rule of the "restricted" profile (baseline included) that the pod spec breaks."""
    found = []
    pod_ctx = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"{flag} is true")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"sysctl {sysctl.get('name')} is not in the safe set")
    for volume in pod.get("volumes") or []:
        kind = next((key for key in volume if key != "name"), None)
        if kind not in RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']} is of type {kind}")
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    for container in containers:
        name, ctx = container["name"], container.get("securityContext") or {}
        caps = ctx.get("capabilities") or {}
        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{name}: capabilities must drop ALL")
        for cap in caps.get("add") or []:
            if cap != "NET_BIND_SERVICE":  # the one capability "restricted" lets a container add
                found.append(f"{name}: adds capability {cap}")
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp}")
        if ctx.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount {ctx['procMount']}")
        if (ctx.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{name}: hostProcess")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
    return found


SPECS = {
    **{path.name: load(path)["spec"] for path in EXAMPLES},
    "model-url": {"model": {"url": {"url": "https://x.example/m.tar.gz", "sha256": "b" * 64}}},
}


@pytest.mark.parametrize("name", SPECS)
def test_server_pods_pass_the_restricted_profile(name) -> None:
    deployment = build_deployment(OWNER, parse_spec(SPECS[name]), Images())
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False  # they never talk to the Kubernetes API
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (10001, 10001)
    if name == "model-url":
        assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda pod: pod.update(hostNetwork=True), "hostNetwork is true"),
        (lambda pod: pod["securityContext"].pop("runAsNonRoot"), "server: runAsNonRoot must be true"),
        (lambda pod: pod["securityContext"].pop("seccompProfile"), "seccompProfile must be RuntimeDefault"),
        (lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "volume h is of type hostPath"),
        (lambda pod: pod["containers"][0]["securityContext"].update(privileged=True), "server: privileged"),
        (
            lambda pod: pod["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
            "allowPrivilegeEscalation must be false",
        ),
        (
            lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            "adds capability SYS_ADMIN",
        ),
        (lambda pod: pod["containers"][0]["ports"][0].update(hostPort=80), "hostPort 80"),
    ],
)
def test_the_check_finds_what_the_profile_refuses(edit, expected) -> None:
    pod = copy.deepcopy(build_deployment(OWNER, parse_spec(SPECS["model-url"]), Images())["spec"]["template"]["spec"])
    pod["containers"][0]["securityContext"].pop("runAsNonRoot")  # the pod's setting covers it
    pod["containers"][0]["securityContext"].pop("seccompProfile")
    assert restricted_violations(pod) == []
    edit(pod)
    assert any(expected in violation for violation in restricted_violations(pod)), restricted_violations(pod)
