"""The operator's least-privilege RBAC rules: the Helm chart renders its ClusterRole
from exactly this list (tests/operator/test_operator.py checks the code paths use no more).

Why each rule:
- llmservers get/list/watch/patch: kopf watches them and patches its annotations (the
  last handled spec, retry state; and removes an older version's finalizer); each
  reconcile pass reads the LLMServer afresh. /status patch: the status. /finalizers
  update: owner references with blockOwnerDeletion on the objects we create.
- deployments, services, configmaps, networkpolicies, poddisruptionbudgets
  get/create/patch: the owned objects
  (created, then merge-patched; deleted by owner-reference garbage collection).
  deployments list/watch: kopf runs a pass when a Deployment changes (its status, or a
  hand edit to undo). configmaps get also reads a probe ConfigMap.
- secrets get/create/delete, never list, watch, patch or update: the admin-token Secret
  is read by name, created, and replaced (deleted, created) when it is not as written;
  the operator can read no Secret whose name it does not know.
- pods list/watch: each pass lists the pods to retune the ready ones; kopf watches them.
- events create: kopf reports warnings as Kubernetes Events.
- customresourcedefinitions list/watch: kopf observes CRDs to discover resources.
- persistentvolumeclaims get/create/patch/delete: the model cache's claim (NAME-cache)
  with cache.persistentVolumeClaim set, its size grown by a patch, deleted when the
  spec stops asking for it.
- inferencepools (inference.networking.k8s.io) get/create/patch/delete: the pool an
  LLMServer owns with routing.inferencePool on, deleted when it is turned off (read on
  every pass: a cluster without the CRD answers 404, which reads as "none").
- kopfpeerings (namespaced mode) and clusterkopfpeerings (all namespaces)
  get/list/watch/create/patch: kopf's peering between operator replicas (it watches the
  peering object and patches its keep-alive into it; each replica creates the object if
  it is missing; the resync loop reads it to know whether it leads).
Watching namespaces by glob (``--namespace 'team-*'``) would also need namespaces
list/watch; the operator does not need it for all namespaces or exact names.
"""

from __future__ import annotations

PEERING_VERBS = ["get", "list", "watch", "create", "patch"]
PERMISSIONS: list[dict[str, list[str]]] = [
    {"apiGroups": ["trail.dev"], "resources": ["llmservers"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["trail.dev"], "resources": ["llmservers/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["trail.dev"], "resources": ["llmservers/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "delete"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create", "patch", "delete"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {
        "apiGroups": ["inference.networking.k8s.io"],
        "resources": ["inferencepools"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": PEERING_VERBS},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings"], "verbs": PEERING_VERBS},
]
