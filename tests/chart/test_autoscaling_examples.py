"""examples/autoscaling: the HPA is valid Kubernetes, targets the LLMServer (never its
Deployment) through the CRD's scale subresource, on the metric the pods export; the
adapter rule and KEDA's query name that same metric."""

from __future__ import annotations

import kubernetes_validate
import yaml
from chart_helpers import REPO

from trail_operator.crd import API_VERSION, KIND, version_entry
from trail_scheduler.server.metrics import PREDICTED_DRAIN

FOLDER = REPO / "examples" / "autoscaling"
SERVER = yaml.safe_load((REPO / "examples" / "llmserver-cpu-smollm2.yaml").read_text())["metadata"]["name"]
METRIC = PREDICTED_DRAIN.describe()[0].name


def load(name: str) -> dict:
    return yaml.safe_load((FOLDER / name).read_text())


def test_the_hpa_scales_the_llmserver_on_predicted_drain_time():
    hpa = load("hpa.yaml")
    kubernetes_validate.validate(hpa, "1.30", strict=True)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": API_VERSION, "kind": KIND, "name": SERVER}
    assert "scale" in version_entry()["subresources"]  # what the HPA writes spec.replicas through
    [metric] = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == METRIC


def test_the_adapter_and_keda_read_the_same_metric_without_nan():
    [rule] = load("prometheus-adapter-values.yaml")["rules"]["custom"]
    assert rule["seriesQuery"].startswith(f"{METRIC}{{") and ">= 0" in rule["metricsQuery"]
    keda = load("keda-scaledobject.yaml")
    assert keda["spec"]["scaleTargetRef"] == {"apiVersion": API_VERSION, "kind": KIND, "name": SERVER}
    [trigger] = keda["spec"]["triggers"]
    assert METRIC in trigger["metadata"]["query"] and ">= 0" in trigger["metadata"]["query"]
