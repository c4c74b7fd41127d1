"""The k8s/ manifests: schema-valid offline (kubernetes-validate ships the JSON schemas) and safe.

The kustomization is rendered here the way `kubectl apply -k` would for what it uses: the listed
resources in order, the namespace set on namespaced objects, the image rewritten.
"""

from __future__ import annotations

import ipaddress
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from app.worker.settings import WorkerSettings

K8S = Path(__file__).resolve().parents[2] / "k8s"
KUBERNETES_VERSION = "1.33"
CLUSTER_SCOPED = {"Namespace"}
Manifest = dict[str, Any]


def _documents(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def kustomization() -> Manifest:
    data: Manifest = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


@cache
def rendered() -> tuple[Manifest, ...]:
    config = kustomization()
    images = {image["name"]: image for image in config.get("images", [])}
    out: list[Manifest] = []
    for name in config["resources"]:
        for doc in _documents(K8S / name):
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = config["namespace"]
            for pod in _pod_specs(doc):
                for container in _containers(pod):
                    image = images.get(container["image"])
                    if image is not None:
                        container["image"] = f"{image['newName']}:{image['newTag']}"
            out.append(doc)
    return tuple(out)


def _pod_specs(doc: Manifest) -> list[Manifest]:
    if doc["kind"] in ("Deployment", "Job"):
        return [doc["spec"]["template"]["spec"]]
    return []


def _containers(pod: Manifest) -> list[Manifest]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def one(kind: str, name: str) -> Manifest:
    (found,) = [d for d in rendered() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- schema -----------------------------------------------------------------------------------

ALL_FILES = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("filename", ALL_FILES)
def test_every_manifest_is_valid_against_the_kubernetes_schema(filename: str) -> None:
    for doc in _documents(K8S / filename):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_rendered_kustomization_is_schema_valid_and_namespaced() -> None:
    kinds = set()
    for doc in rendered():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        kinds.add(doc["kind"])
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "billing"
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "NetworkPolicy",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
    }


def test_a_schema_violation_is_caught() -> None:
    broken = _documents(K8S / "pdb.yaml")[0]
    broken["spec"]["minAvailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    assert sorted(kustomization()["resources"]) == sorted(f for f in ALL_FILES if f != "secret.example.yaml")
    assert kustomization()["resources"][0] == "namespace.yaml"


# --- configuration ----------------------------------------------------------------------------


def test_the_secret_template_holds_placeholders_only() -> None:
    (secret,) = _documents(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert "data" not in secret
    for key, value in secret["stringData"].items():
        assert "CHANGE_ME" in value, key


def test_config_and_secret_provide_every_required_setting_and_no_secret_sits_in_the_config_map() -> None:
    config = one("ConfigMap", "billing-config")["data"]
    (secret,) = _documents(K8S / "secret.example.yaml")
    provided = set(config) | set(secret["stringData"])
    required = {name.upper() for name, field in Settings.model_fields.items() if field.is_required()}
    assert required <= provided
    for key in config:
        assert not any(word in key for word in ("SECRET", "PASSWORD", "TOKEN", "DATABASE_URL", "REDIS_URL"))


# --- workloads --------------------------------------------------------------------------------

WORKLOADS = [("Deployment", "billing-api"), ("Deployment", "billing-worker"), ("Job", "billing-migrate")]


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_workloads_run_locked_down(kind: str, name: str) -> None:
    pod = one(kind, name)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in _containers(pod):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "add" not in context["capabilities"]
        resources = container["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert set(resources["limits"]) == {"cpu", "memory"}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert mounts.get("/tmp") in tmp_volumes  # noqa: S108  # writable /tmp on a read-only root
        image = container["image"]
        assert image.startswith("registry.example.com/marketplace/billing:")
        assert not image.endswith(":latest")


def test_deployment_selectors_match_their_pods() -> None:
    for name in ("billing-api", "billing-worker"):
        deployment = one("Deployment", name)
        assert _labels_match(
            deployment["spec"]["selector"]["matchLabels"],
            deployment["spec"]["template"]["metadata"]["labels"],
        )


def test_the_api_runs_two_spread_replicas_with_probes() -> None:
    deployment = one("Deployment", "billing-api")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    assert api["command"] == ["billing", "api"]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": 8080}
    assert api["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/health"

    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(
        t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        and _labels_match(t["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels("billing-api"))
        for t in terms
    )
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert "topology.kubernetes.io/zone" in spread


def pod_labels(deployment: str) -> dict[str, str]:
    labels: dict[str, str] = one("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_api_grace_period_covers_the_drain_and_the_in_flight_requests() -> None:
    config = one("ConfigMap", "billing-config")["data"]
    drain = float(config["SHUTDOWN_DRAIN_SECONDS"])
    graceful = float(config["SHUTDOWN_GRACEFUL_TIMEOUT_SECONDS"])
    assert drain >= 5  # readiness is observed false (probe period 5 s) before the listener closes
    grace = one("Deployment", "billing-api")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + graceful + 5


def test_the_worker_is_probed_by_its_heartbeat_and_its_grace_period_covers_running_jobs() -> None:
    pod = one("Deployment", "billing-worker")["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["command"] == ["billing", "worker"]
    assert worker["livenessProbe"]["exec"]["command"] == ["billing", "worker", "--check"]
    assert worker["livenessProbe"]["periodSeconds"] >= WorkerSettings.health_check_interval
    assert pod["terminationGracePeriodSeconds"] >= WorkerSettings.job_completion_wait + 10


def test_migrations_run_in_a_job_and_new_pods_wait_for_them() -> None:
    job = one("Job", "billing-migrate")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["command"] == ["billing", "migrate"]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    order = [d["metadata"]["name"] for d in rendered() if d["kind"] in ("Job", "Deployment")]
    assert order.index("billing-migrate") < order.index("billing-api")
    for name in ("billing-api", "billing-worker"):
        init = one("Deployment", name)["spec"]["template"]["spec"]["initContainers"]
        assert init[0]["command"][:4] == ["billing", "migrate", "--check", "--wait"]


def test_the_disruption_budget_keeps_an_api_pod_serving() -> None:
    pdb = one("PodDisruptionBudget", "billing-api")
    assert _labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels("billing-api"))
    assert 1 <= pdb["spec"]["minAvailable"] < one("Deployment", "billing-api")["spec"]["replicas"]


def test_the_service_and_the_ingress_reach_the_api() -> None:
    service = one("Service", "billing-api")
    assert _labels_match(service["spec"]["selector"], pod_labels("billing-api"))
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = one("Ingress", "billing")
    paths = {p["path"]: p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert set(paths) == {"/api", "/webhooks/stripe"}
    assert paths["/webhooks/stripe"]["pathType"] == "Exact"
    for path in paths.values():
        backend = path["backend"]["service"]
        assert backend["name"] == "billing-api"
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"]


def test_the_autoscaler_scales_the_api_on_cpu() -> None:
    hpa = one("HorizontalPodAutoscaler", "billing-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "billing-api",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


# --- network policies -------------------------------------------------------------------------


def _policies() -> dict[str, Manifest]:
    return {d["metadata"]["name"]: d["spec"] for d in rendered() if d["kind"] == "NetworkPolicy"}


def test_everything_is_denied_unless_a_policy_opens_it() -> None:
    deny = _policies()["billing-default-deny"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny


def _peer(peer: Manifest) -> tuple[str, str]:
    namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
    pods = peer["podSelector"]
    names = pods.get("matchLabels") or {e["key"]: ",".join(e["values"]) for e in pods["matchExpressions"]}
    return namespace, ",".join(sorted(names.values()))


def _ingress_policy_of(component: str) -> Manifest:
    policies = _policies()
    ingress_policies = [
        p
        for p in policies.values()
        if "Ingress" in p["policyTypes"]
        and p.get("ingress")
        and p["podSelector"]["matchLabels"].get("component") == component
    ]
    (policy,) = ingress_policies
    return policy


def test_ingress_is_opened_only_to_the_api_and_to_the_workers_metrics() -> None:
    opened = [p for p in _policies().values() if p.get("ingress")]
    assert sorted(p["podSelector"]["matchLabels"]["component"] for p in opened) == ["api", "worker"]


def test_only_the_gateway_the_ingress_controller_and_prometheus_reach_the_api() -> None:
    policy = _ingress_policy_of("api")
    assert policy["podSelector"]["matchLabels"] == {"app": "billing", "component": "api"}
    (rule,) = policy["ingress"]
    assert {_peer(p) for p in rule["from"]} == {
        ("marketplace", "frontend,gateway"),
        ("ingress-nginx", "ingress-nginx"),
        ("monitoring", "prometheus"),
    }
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_egress_reaches_only_dns_the_databases_the_siblings_and_stripe() -> None:
    egress_policies = [p for p in _policies().values() if p.get("egress")]
    assert len(egress_policies) == 1
    (policy,) = egress_policies
    assert policy["podSelector"]["matchLabels"] == {"app": "billing"}
    allowed: set[tuple[object, tuple[tuple[str, int], ...]]] = set()
    for rule in policy["egress"]:
        assert rule["to"]  # no rule opens every destination
        assert rule["ports"]  # nor every port
        ports = tuple(sorted((p["protocol"], p["port"]) for p in rule["ports"]))
        for peer in rule["to"]:
            if "ipBlock" in peer:
                block = peer["ipBlock"]
                assert ports == (("TCP", 443),)  # the internet only for HTTPS (Stripe)
                private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
                assert private <= set(block["except"])
                assert ipaddress.ip_network(block["cidr"]).prefixlen == 0
                allowed.add(("internet", ports))
            else:
                allowed.add((_peer(peer), ports))
    assert allowed == {
        (("kube-system", "kube-dns"), (("TCP", 53), ("UDP", 53))),
        (("data", "postgresql"), (("TCP", 5432),)),
        (("data", "redis"), (("TCP", 6379),)),
        (("marketplace", "apikeys,metering"), (("TCP", 8080),)),
        ("internet", (("TCP", 443),)),
    }


def test_prometheus_alone_scrapes_the_workers_metrics_port() -> None:
    config = one("ConfigMap", "billing-config")["data"]
    port = int(config["WORKER_METRICS_PORT"])
    pod = one("Deployment", "billing-worker")["spec"]["template"]
    (worker,) = pod["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {"metrics": port}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    service = one("Service", "billing-worker-metrics")
    assert _labels_match(service["spec"]["selector"], pod_labels("billing-worker"))
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    policy = _ingress_policy_of("worker")
    (rule,) = policy["ingress"]
    assert {_peer(p) for p in rule["from"]} == {("monitoring", "prometheus")}
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
