{{/*
How the operator labels the Service it creates for each LLMServer (its port named
`http` serves the OpenAI API and /metrics). The ServiceMonitor selects those Services;
tests/chart/test_monitoring.py checks this against trail_operator.owned.build_service.
*/}}
{{- define "trail-operator.serverServiceLabels" -}}
app.kubernetes.io/name: trail-server
app.kubernetes.io/managed-by: trail-operator
{{- end }}

{{- define "trail-operator.serverMetricsPort" -}}
http
{{- end }}
