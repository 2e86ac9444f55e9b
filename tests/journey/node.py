"""The node stand-in: what a Kubernetes node and its controllers do for our pods, done for real.

Every Pod object becomes real processes, started exactly as the pod spec says:
- **network**: each pod gets its own network namespace, a veth into a bridge and its own IP
  (10.244.0.x, kind's pod range), so every replica binds the same ports, as pods do;
- **containers**: init containers run to completion first (retried with back-off while
  they fail); then each container's own ``command`` and ``args`` (``$(VAR)`` expanded) run
  with its ``env`` (``value``, ``secretKeyRef``, ``configMapKeyRef``, ``fieldRef`` resolved
  from the API server at container start);
- **volumes**: ConfigMap, Secret and emptyDir volumes are materialised as folders and
  bind-mounted at their ``mountPath`` (or a ``subPath`` of them; read-only where asked) in a
  private mount namespace, plus the service-account folder a kubelet mounts (token,
  ``ca.crt``, namespace); a memory-backed emptyDir is a tmpfs of its ``sizeLimit`` (one per
  container here, not shared between a pod's containers); ``/dev/shm`` is a 64 MiB tmpfs,
  a container runtime's default, unless a volume is mounted there; a PersistentVolumeClaim
  is one folder on this node, shared by every pod that mounts the claim (a node-local
  volume, as kind's local-path provisioner makes);
- **hostname**: the pod's name, in a UTS namespace of its own, resolving to the pod's IP
  through the ``/etc/hosts`` a kubelet writes (else every lookup of it waits on DNS);
- **probes**: startup, readiness and liveness ``httpGet`` probes at the pod's IP with the
  spec's periods and thresholds; Ready and ``containerStatuses`` (restart counts, states,
  last termination with ``FallbackToLogsOnError`` messages) written to the Pod's status;
- **restarts**: a container that exits is restarted with the kubelet's back-off
  (10 s doubling, capped), so a crash loop shows as ``CrashLoopBackOff``.

Two controllers the journey needs run here too, simplified: the Deployment controller
(pods owned directly by the Deployment, no ReplicaSets; a template change recreates the
pods; status counts) and the garbage collector (objects whose controller owner is gone are
deleted). The "image" is this machine's virtualenv: nothing of images, resource limits,
scheduling or network policy is stood in for (docs/kubernetes.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lightkube.utils.quantity import parse_quantity

logger = logging.getLogger("journey.node")

BRIDGE = "trail-br0"
POD_NET = "10.244.0"
GATEWAY = f"{POD_NET}.1"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PRODUCT = Path(__file__).resolve().parents[2]  # the checkout the pods run (its .venv is on their PATH)
SHM_DIR = "/dev/shm"
RUNTIME_SHM_BYTES = 64 << 20  # containerd's and Docker's /dev/shm for a container
BACKOFF_START_S, BACKOFF_CAP_S = 10.0, 40.0
OWNED_KINDS = {  # what the garbage collector looks at: kind -> API path under a namespace
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "InferencePool": "/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools",
}
OWNER_KINDS = {"LLMServer": "/apis/trail.dev/v1alpha1/llmservers", "Deployment": "/apis/apps/v1/deployments"}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sh(*argv: str) -> None:
    import subprocess

    subprocess.run(argv, check=True, capture_output=True)


class Network:
    """A bridge on this machine and a network namespace per pod."""

    def __init__(self) -> None:
        self.free = list(range(2, 250))
        self.clean()
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")

    @staticmethod
    def clean() -> None:
        import subprocess

        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        for name in names:
            if name.startswith("trailpod-"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)

    def attach(self) -> tuple[str, str]:
        """A new namespace and its IP."""
        n = self.free.pop(0)
        namespace, veth, ip = f"trailpod-{n}", f"trailv{n}", f"{POD_NET}.{n}"
        _sh("ip", "netns", "add", namespace)
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        for command in (
            ["ip", "addr", "add", f"{ip}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "route", "add", "default", "via", GATEWAY],
        ):
            _sh("ip", "netns", "exec", namespace, *command)
        return namespace, ip

    def detach(self, namespace: str, ip: str) -> None:
        import subprocess

        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.free.append(int(ip.rsplit(".", 1)[1]))

    def close(self) -> None:
        self.clean()


@dataclass
class Container:
    spec: dict[str, Any]
    log: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: bool = False  # the startup probe passed (or there is none)
    ready: bool = False
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec["name"]

    def status(self, image: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": image,
            "imageID": "",  # required by the API (clients' models check it); no image is pulled here
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }


@dataclass(frozen=True)
class Memory:
    """A memory-backed emptyDir: a tmpfs, of ``size_bytes`` where the volume sets a sizeLimit."""

    size_bytes: int | None


class Pod:
    """One Pod object's processes, volumes and status."""

    def __init__(self, node: Node, pod: dict[str, Any]) -> None:
        self.node, self.obj = node, pod
        meta = pod["metadata"]
        self.name, self.namespace, self.uid = meta["name"], meta["namespace"], meta["uid"]
        self.dir = node.workdir / f"{self.namespace}_{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.netns, self.ip = node.network.attach()
        spec = pod["spec"]
        self.init = [Container(c, self.dir / f"{c['name']}.log") for c in spec.get("initContainers") or []]
        self.containers = [Container(c, self.dir / f"{c['name']}.log") for c in spec["containers"]]
        self.initialized = not self.init
        self.task = asyncio.create_task(self._run())

    # -- what a test looks at ---------------------------------------------------------
    def container(self, name: str) -> Container:
        return next(c for c in self.init + self.containers if c.name == name)

    def logs(self, name: str) -> str:
        path = self.container(name).log
        return path.read_text(errors="replace") if path.exists() else ""

    # -- lifecycle -----------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            for container in self.init:
                delay = BACKOFF_START_S
                while await self._run_once(container) != 0:
                    delay = await self._back_off(container, delay)
            self.initialized = True
            await asyncio.gather(*(self._supervise(c) for c in self.containers))
        except asyncio.CancelledError:
            raise
        except Exception:  # the harness must say why a pod stopped, never hang silently
            logger.exception("pod %s failed in the node stand-in", self.name)
            raise

    async def _run_once(self, container: Container) -> int:
        """Start the container, wait for it to exit; its exit code."""
        try:
            argv, env = await self._command(container)
        except LookupError as error:  # a missing Secret or ConfigMap key, as the kubelet reports it
            container.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
            await self.report()
            return 1
        with container.log.open("ab") as log:
            container.process = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True
            )
        container.state = {"running": {"startedAt": _now()}}
        await self.report()
        code = await container.process.wait()
        with contextlib.suppress(ProcessLookupError):  # the rest of the container's processes go with it
            os.killpg(container.process.pid, signal.SIGKILL)
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}
        if code != 0 and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            terminated["message"] = "\n".join(self.logs(container.name).splitlines()[-80:])[-2048:]
        container.state, container.last_state = {"terminated": terminated}, {"terminated": terminated}
        container.started = container.ready = False
        await self.report()
        return code

    async def _supervise(self, container: Container) -> None:
        delay = BACKOFF_START_S
        while True:
            probes = asyncio.create_task(self._probe(container))
            try:
                await self._run_once(container)
            finally:
                probes.cancel()
            delay = await self._back_off(container, delay)

    async def _back_off(self, container: Container, delay: float) -> float:
        """Wait out the kubelet's back-off before a failed container's restart; the next delay."""
        container.state = {
            "waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay:.0f}s restarting failed container"}
        }
        await self.report()
        await asyncio.sleep(delay)
        container.restarts += 1
        return min(BACKOFF_CAP_S, delay * 2)

    async def _probe(self, container: Container) -> None:
        spec = container.spec
        startup, readiness, liveness = spec.get("startupProbe"), spec.get("readinessProbe"), spec.get("livenessProbe")
        failures = {"startup": 0, "liveness": 0}
        async with httpx.AsyncClient() as client:
            if startup is None:
                container.started = True
            while True:
                if not container.started:
                    ok = await self._check(client, startup)
                    failures["startup"] = 0 if ok else failures["startup"] + 1
                    if ok:
                        container.started = True
                        await self.report()
                        continue
                    if failures["startup"] >= startup.get("failureThreshold", 3):
                        await self._kill(container, "startup probe failed")
                        return
                    await asyncio.sleep(startup.get("periodSeconds", 10))
                    continue
                ready = readiness is None or await self._check(client, readiness)
                if ready != container.ready:
                    container.ready = ready
                    await self.report()
                if liveness is not None:
                    ok = await self._check(client, liveness)
                    failures["liveness"] = 0 if ok else failures["liveness"] + 1
                    if failures["liveness"] >= liveness.get("failureThreshold", 3):
                        await self._kill(container, "liveness probe failed")
                        return
                await asyncio.sleep((readiness or liveness or {}).get("periodSeconds", 10))

    async def _check(self, client: httpx.AsyncClient, probe: dict[str, Any]) -> bool:
        get = probe["httpGet"]
        port = self._port(get["port"])
        try:
            reply = await client.get(
                f"http://{self.ip}:{port}{get.get('path', '/')}", timeout=probe.get("timeoutSeconds", 1)
            )
        except httpx.HTTPError:
            return False
        return 200 <= reply.status_code < 400

    def _port(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        for container in self.obj["spec"]["containers"]:
            for item in container.get("ports") or []:
                if item.get("name") == port:
                    return int(item["containerPort"])
        raise LookupError(f"no container port named {port!r}")

    async def _kill(self, container: Container, why: str) -> None:
        logger.info("pod %s: killing %s (%s)", self.name, container.name, why)
        if container.process is not None and container.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Terminate as a kubelet does: SIGTERM, the grace period, then SIGKILL."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        grace = float(self.obj["spec"].get("terminationGracePeriodSeconds", 30))
        running = [
            c.process for c in self.init + self.containers if c.process is not None and c.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), grace)
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        self.node.network.detach(self.netns, self.ip)

    # -- what a container sees -------------------------------------------------------------
    async def _command(self, container: Container) -> tuple[list[str], dict[str, str]]:
        spec = container.spec
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": self.name,
            "KUBERNETES_SERVICE_HOST": GATEWAY,
            "KUBERNETES_SERVICE_PORT": str(self.node.api_port),
        }
        for var in spec.get("env") or []:
            env[var["name"]] = await self._env_value(var, env)
        command = [_expand(part, env) for part in (spec.get("command") or []) + (spec.get("args") or [])]
        if not command:
            raise LookupError(f"container {container.name} has no command (the node stand-in runs no images)")
        script = ["set -e", f"hostname {shlex.quote(self.name)}"]
        mounts = await self._mounts(container)
        # The product (this checkout and its virtualenv) is what an image would hold; a volume
        # mounted over a folder above it (an emptyDir at /tmp, with the clone under /tmp) must not
        # hide it, so it is set aside first and bound back at its own path after the volumes.
        covered = any(PRODUCT.is_relative_to(target) for _, target, _ in mounts)
        staged = shlex.quote(str(self.dir / "product"))
        if covered:
            script.append(f"mkdir -p {staged} && mount --bind {shlex.quote(str(PRODUCT))} {staged}")
        if not any(target == SHM_DIR for _, target, _ in mounts):
            script.append(f"mount -t tmpfs -o size={RUNTIME_SHM_BYTES} shm {SHM_DIR}")
        for source, target, read_only in mounts:
            if isinstance(source, Memory):
                size = f"-o size={source.size_bytes} " if source.size_bytes else ""
                script.append(f"mkdir -p {shlex.quote(target)} && mount -t tmpfs {size}tmpfs {shlex.quote(target)}")
                continue
            make = f"mkdir -p {shlex.quote(target)} && " if source.is_dir() else ""  # a file mounts over a file
            script.append(f"{make}mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
            if read_only:
                script.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
        if covered:
            script.append(f"mkdir -p {shlex.quote(str(PRODUCT))} && mount --bind {staged} {shlex.quote(str(PRODUCT))}")
        script.append('exec "$@"')
        argv = [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            "\n".join(script),
            "sh",
            *command,
        ]
        return argv, env

    async def _env_value(self, var: dict[str, Any], env: dict[str, str]) -> str:
        if "valueFrom" not in var:
            return _expand(var.get("value", ""), env)
        source = var["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            values = {
                "metadata.name": self.name,
                "metadata.namespace": self.namespace,
                "status.podIP": self.ip,
                "metadata.uid": self.uid,
            }
            return values[path]
        for key, kind in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
            if key in source:
                ref = source[key]
                obj = await self.node.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{ref['name']}")
                data = (obj or {}).get("data") or {}
                if ref["key"] not in data:
                    raise LookupError(f"{kind[:-1]} {ref['name']!r} has no key {ref['key']!r} (env {var['name']})")
                return base64.b64decode(data[ref["key"]]).decode() if kind == "secrets" else data[ref["key"]]
        raise LookupError(f"env {var['name']}: unsupported valueFrom {sorted(source)}")

    async def _mounts(self, container: Container) -> list[tuple[Path | Memory, str, bool]]:
        volumes = {v["name"]: v for v in self.obj["spec"].get("volumes") or []}
        mounts: list[tuple[Path | Memory, str, bool]] = []
        for mount in container.spec.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if (volume.get("emptyDir") or {}).get("medium") == "Memory":
                limit = volume["emptyDir"].get("sizeLimit")
                mounts.append((Memory(int(parse_quantity(limit)) if limit else None), mount["mountPath"], False))
                continue
            source = await self._volume(volume)
            if mount.get("subPath"):
                source = source / mount["subPath"]
                source.mkdir(parents=True, exist_ok=True)  # as a kubelet makes a missing subPath
            mounts.append((source, mount["mountPath"], bool(mount.get("readOnly"))))
        hosts = self.dir / "hosts"
        hosts.write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{self.ip}\t{self.name}\n")
        mounts.append((hosts, "/etc/hosts", True))
        if self.obj["spec"].get("automountServiceAccountToken", True):
            folder = self.dir / "serviceaccount"
            folder.mkdir(exist_ok=True)
            (folder / "token").write_text("journey-service-account-token")
            (folder / "namespace").write_text(self.namespace)
            shutil.copy(self.node.ca, folder / "ca.crt")
            mounts.append((folder, SA_DIR, True))
        return mounts

    async def _volume(self, volume: dict[str, Any]) -> Path:
        """The volume's folder, its files refreshed from the API server (as a kubelet syncs them)."""
        folder = self.dir / "volumes" / volume["name"]
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if await self.node.get(f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{claim}") is None:
                raise LookupError(f"persistentvolumeclaim {claim!r} not found (volume {volume['name']})")
            shared = self.node.workdir / "claims" / f"{self.namespace}_{claim}"
            shared.mkdir(parents=True, exist_ok=True)
            return shared
        if "configMap" in volume or "secret" in volume:
            kind, name = (
                ("configmaps", volume["configMap"]["name"])
                if "configMap" in volume
                else ("secrets", volume["secret"]["secretName"])
            )
            obj = await self.node.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
            if obj is None:
                raise LookupError(f"{kind[:-1]} {name!r} not found (volume {volume['name']})")
            files = {key: base64.b64decode(value) for key, value in (obj.get("binaryData") or {}).items()}
            for key, value in (obj.get("data") or {}).items():
                files[key] = base64.b64decode(value) if kind == "secrets" else value.encode()
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for key, value in files.items():
                (folder / key).write_bytes(value)
            return folder
        raise LookupError(
            f"volume {volume['name']}: only configMap, secret, emptyDir and persistentVolumeClaim are stood in for"
        )

    # -- status --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        image = {c["name"]: c.get("image", "") for c in self.obj["spec"]["containers"]}
        init_image = {c["name"]: c.get("image", "") for c in self.obj["spec"].get("initContainers") or []}
        ready = self.initialized and all(c.ready for c in self.containers)
        flag = lambda value: "True" if value else "False"  # noqa: E731
        return {
            "phase": "Running" if self.initialized else "Pending",
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": GATEWAY,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": flag(self.initialized)},
                {"type": "ContainersReady", "status": flag(ready)},
                {"type": "Ready", "status": flag(ready)},
            ],
            "initContainerStatuses": [c.status(init_image[c.name]) for c in self.init],
            "containerStatuses": [c.status(image[c.name]) for c in self.containers],
        }

    async def report(self) -> None:
        await self.node.patch(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": self.status()})


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class Node:
    """The kubelet, the Deployment controller and the garbage collector, as one loop."""

    def __init__(self, api_url: str, api_port: int, ca: Path, workdir: Path) -> None:
        self.api_port, self.ca, self.workdir = api_port, ca, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.client = httpx.AsyncClient(
            base_url=api_url, verify=str(ca), timeout=30, headers={"Authorization": "Bearer journey-node"}
        )
        self.network = Network()
        self.pods: dict[str, Pod] = {}  # uid -> the running pod
        self.stopping: set[asyncio.Task] = set()

    async def get(self, path: str) -> dict[str, Any] | None:
        reply = await self.client.get(path)
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return reply.json()

    async def items(self, path: str) -> list[dict[str, Any]]:
        return (await self.get(path) or {}).get("items") or []

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        reply = await self.client.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"})
        if reply.status_code != 404:
            reply.raise_for_status()

    async def delete(self, path: str) -> None:
        reply = await self.client.delete(path)
        if reply.status_code != 404:
            reply.raise_for_status()

    async def run(self) -> None:
        """Poll (a kubelet watches; polling keeps this small): the API server shares the test's CPU."""
        passes = 0
        while True:
            try:
                if passes % 5 == 0:
                    await self._collect_garbage()
                await self.sync()
            except httpx.HTTPError as error:
                logger.warning("node stand-in: %s", error)
            passes += 1
            await asyncio.sleep(1.0)

    async def sync(self) -> None:
        pods_now = await self.items("/api/v1/pods")
        for deployment in await self.items("/apis/apps/v1/deployments"):
            await self._sync_deployment(deployment, pods_now)
        pods = {p["metadata"]["uid"]: p for p in await self.items("/api/v1/pods")}
        for uid in list(self.pods):
            if uid not in pods or pods[uid]["metadata"].get("deletionTimestamp"):
                self.stopping.add(asyncio.create_task(self.pods.pop(uid).stop()))
        for uid, obj in pods.items():
            if uid not in self.pods and not obj["metadata"].get("deletionTimestamp"):
                self.pods[uid] = Pod(self, obj)

    async def _sync_deployment(self, deployment: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace = meta["namespace"]
        wanted = template_hash(spec["template"])
        owned = [
            p for p in pods if any(ref.get("uid") == meta["uid"] for ref in p["metadata"].get("ownerReferences") or [])
        ]
        current = [p for p in owned if p["metadata"]["labels"].get("pod-template-hash") == wanted]
        for pod in owned:
            if pod not in current:  # a new template: recreate (no rolling update here)
                await self.delete(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
        replicas = int(spec.get("replicas", 1))
        current.sort(key=lambda p: p["metadata"]["creationTimestamp"])
        for pod in current[replicas:]:
            await self.delete(f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}")
        current = current[:replicas]
        while len(current) < replicas:
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            template = spec["template"]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{meta['name']}-{wanted}-{suffix}",
                    "namespace": namespace,
                    "labels": {**(template["metadata"].get("labels") or {}), "pod-template-hash": wanted},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": {**template["spec"], "nodeName": "journey-node"},
                "status": {"phase": "Pending"},
            }
            reply = await self.client.post(f"/api/v1/namespaces/{namespace}/pods", json=pod)
            reply.raise_for_status()
            current.append(reply.json())
        ready = sum(
            1
            for p in current
            if p["metadata"]["uid"] in self.pods
            and self.pods[p["metadata"]["uid"]].status()["conditions"][3]["status"] == "True"
        )
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(current),
            "updatedReplicas": len(current),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if any((deployment.get("status") or {}).get(key) != value for key, value in status.items()):
            await self.patch(
                f"/apis/apps/v1/namespaces/{namespace}/deployments/{meta['name']}/status", {"status": status}
            )

    async def _collect_garbage(self) -> None:
        owners = set()
        for path in OWNER_KINDS.values():
            owners.update(o["metadata"]["uid"] for o in await self.items(path))
        namespaces = {o["metadata"]["namespace"] for o in await self.items("/api/v1/pods")}
        namespaces |= {o["metadata"]["namespace"] for o in await self.items("/apis/apps/v1/deployments")}
        namespaces |= {o["metadata"]["namespace"] for o in await self.items("/api/v1/configmaps")}
        for namespace in namespaces:
            for path in OWNED_KINDS.values():
                base = path.format(ns=namespace)
                for obj in await self.items(base):
                    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")]
                    if refs and refs[0]["uid"] not in owners:
                        await self.delete(f"{base}/{obj['metadata']['name']}")

    async def close(self) -> None:
        await asyncio.gather(*self.stopping, *(pod.stop() for pod in self.pods.values()))
        self.pods.clear()
        await self.client.aclose()
        self.network.close()
