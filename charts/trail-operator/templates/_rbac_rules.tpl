{{/*
The operator's least-privilege rules: together exactly trail_operator.rbac.PERMISSIONS
(tests/chart/test_rbac.py compares them; the reasons for each rule are there).
Namespaced rules go in a ClusterRole (all namespaces) or in a Role per watched
namespace; rules on cluster-scoped resources can only be granted by a ClusterRole.
*/}}
{{- define "trail-operator.namespacedRules" -}}
- apiGroups: ["trail.dev"]
  resources: ["llmservers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["trail.dev"]
  resources: ["llmservers/status"]
  verbs: ["get", "patch"]
- apiGroups: ["trail.dev"]
  resources: ["llmservers/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end }}

{{- define "trail-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "create", "patch"]
{{- end }}

{{/* Who gets the rules: the operator's ServiceAccount. */}}
{{- define "trail-operator.subjects" -}}
- kind: ServiceAccount
  name: {{ include "trail-operator.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
