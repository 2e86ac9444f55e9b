"""The optional ServiceMonitor and Grafana dashboard.

kubernetes-validate has no schema for the ServiceMonitor (a Prometheus-operator CRD
kind), so its test checks what matters instead: that it selects the Services the
operator really builds (trail_operator.owned.build_service) on the port that serves /metrics.
"""

from __future__ import annotations

import json
import re

import pytest
from chart_helpers import CHART, NAMESPACE, by_kind, one

from trail_operator import layout, owned

MONITORING = CHART / "ci" / "monitoring-values.yaml"
NAMESPACED = CHART / "ci" / "namespaced-values.yaml"
DASHBOARD = CHART / "dashboards" / "trail.json"


def exported_trail_metrics() -> dict[str, str]:
    """name -> Prometheus type of every metric `trail serve` defines (its metrics module)."""
    from prometheus_client.metrics import MetricWrapperBase

    from trail_scheduler.server import metrics

    found = {}
    for value in vars(metrics).values():
        for metric in value.values() if isinstance(value, dict) else [value]:
            if isinstance(metric, MetricWrapperBase):
                for family in metric.describe():
                    found[family.name] = family.type
    return found


TRAIL_METRICS = exported_trail_metrics()
# The ones the README and the chart's docs promise, whatever else the server adds.
PROMISED = {
    "trail_preemptions",
    "trail_prediction_abs_error_tokens",
    "trail_predicted_remaining_tokens",
    "trail_setting_c",
    "trail_requests",
}


def test_the_server_exports_the_promised_metrics():
    assert PROMISED <= set(TRAIL_METRICS), PROMISED - set(TRAIL_METRICS)


def operator_service() -> dict:
    owner = layout.Owner(name="chat", namespace="team-a", uid="0000")
    return owned.build_service(owner)


def test_defaults_render_no_monitoring_objects(default_manifests):
    assert by_kind(default_manifests, "ServiceMonitor") == []
    assert by_kind(default_manifests, "ConfigMap") == []


def test_servicemonitor_selects_the_operators_llmserver_services(helm):
    monitor = one(helm.template(MONITORING), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = operator_service()
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector, "an empty selector would scrape every Service"
    assert selector.items() <= service["metadata"]["labels"].items(), (selector, service["metadata"])
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}


def test_servicemonitor_follows_watched_namespaces(helm):
    monitor = one(helm.template(MONITORING, NAMESPACED), "ServiceMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_servicemonitor_does_not_select_the_admin_port():
    admin = layout.ADMIN_PORT_NAME
    assert admin not in {p["name"] for p in operator_service()["spec"]["ports"]}
    template = (CHART / "templates" / "_server.tpl").read_text()
    assert admin not in template.split("serverMetricsPort", 1)[1]


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_configmap_carries_the_dashboard_file(helm):
    configmap = one(helm.template(MONITORING), "ConfigMap")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["trail.json"]) == load_dashboard()


SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.mark.parametrize("metric", sorted(TRAIL_METRICS))
def test_dashboard_plots_every_trail_metric(metric):
    exprs = dashboard_exprs(load_dashboard())
    series = [metric + suffix for suffix in SERIES_SUFFIXES[TRAIL_METRICS[metric]]]
    used = [e for e in exprs if any(re.search(rf"\b{name}\b", e) for name in series)]
    assert used, f"no dashboard panel plots {metric} (series {series})"


def test_dashboard_queries_are_well_formed_and_filtered():
    dashboard = load_dashboard()
    exprs = dashboard_exprs(dashboard)
    assert any("vllm:" in e for e in exprs), "the vLLM engine metrics belong beside TRAIL's"
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
        # Every series is filtered by the dashboard's namespace and LLMServer pickers.
        for selector in re.findall(r"\{([^}]*)\}", expr):
            assert 'namespace=~"$namespace"' in selector, expr
            assert 'service=~"$llmserver"' in selector, expr
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "llmserver"} <= variables
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
