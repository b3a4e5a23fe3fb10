"""The model server of every platform overlay (k8s/base/serving.yaml): `mlflow models serve` of the
registry's champion, from the cluster's MLflow with the Ray pods' login, behind probes, a non-root
security context and a NetworkPolicy that lets clients in and the server out to MLflow only.

Schema validation, image pinning, named ConfigMaps and Secrets and "no credential as a literal" cover
it with every other object (test_manifests.py, test_credentials.py); these are its own settings.
"""

from __future__ import annotations

import pytest

from jobs.promotion import CHAMPION
from tests.k8s.conftest import OVERLAYS
from tests.k8s.test_manifests import _selects, quantity

SERVER = "isrn-serve"
PORT = 8080
CHAMPION_URI = f"models:/isrn-face@{CHAMPION}"


@pytest.fixture(params=[o for o in OVERLAYS if not o.endswith("/jobs")])
def platform(request: pytest.FixtureRequest, render) -> list[dict]:
    """The rendered objects of a platform overlay (`local`, `prod`); the jobs overlays run beside it."""
    return render(request.param)


def _one(objects: list[dict], kind: str, name: str) -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _server(objects: list[dict]) -> tuple[dict, dict]:
    """(pod spec, container) of the model server's Deployment."""
    pod = _one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def test_serves_the_champion_with_mlflows_server(platform: list[dict]) -> None:
    pod, container = _server(platform)
    argv = container["command"] + container["args"]
    assert argv[:3] == ["mlflow", "models", "serve"]
    options = dict(zip(argv[3::2], argv[4::2]))
    assert options == {"-m": CHAMPION_URI, "--env-manager": "local", "--host": "0.0.0.0", "--port": str(PORT)}
    (port,) = container["ports"]
    assert port["containerPort"] == PORT
    service = _one(platform, "Service", SERVER)
    assert service["spec"]["selector"].items() <= _one(platform, "Deployment", SERVER)["spec"]["template"][
        "metadata"]["labels"].items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(PORT, port["name"])]


def test_probes_ping_and_wait_for_the_model_to_load(platform: list[dict]) -> None:
    """Ready and alive on GET /ping; the start (download and load of the model) gets minutes before
    the liveness probe may kill it."""
    _, container = _server(platform)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "less than 5 minutes to load the model"


def test_a_restart_keeps_a_ready_server(platform: list[dict]) -> None:
    """`kubectl rollout restart` (a new champion) brings the new pod up before the old one goes."""
    strategy = _one(platform, "Deployment", SERVER)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_mlflow_login_as_the_ray_pods_have_it(platform: list[dict]) -> None:
    """The tracking URI from the ConfigMap and the login from the Secret isrn-mlflow-auth, whole
    (envFrom), as the Ray workers get them; no variable spells out an MLflow setting, no S3 keys
    (artifacts come through the MLflow server), no Kubernetes API token."""
    pod, container = _server(platform)
    (cluster,) = [o for o in platform if o["kind"] == "RayCluster"]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    mlflow_sources = [s for s in worker["envFrom"] if next(iter(s.values()))["name"] in {"isrn-platform", "isrn-mlflow-auth"}]
    assert container["envFrom"] == mlflow_sources
    assert not [e["name"] for e in container.get("env", []) if e["name"].startswith(("MLFLOW_", "AWS_"))]
    account = _one(platform, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False and pod.get("automountServiceAccountToken") is not True
    assert "annotations" not in account["metadata"], "an IAM role the server does not need"


def test_runs_as_non_root_without_privileges(platform: list[dict]) -> None:
    pod, container = _server(platform)
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_has_resources(platform: list[dict]) -> None:
    _, container = _server(platform)
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity(requests["cpu"]) >= 1 and quantity(requests["memory"]) <= quantity(limits["memory"])


def test_networkpolicy_lets_clients_in_and_the_server_out_to_mlflow_only(platform: list[dict]) -> None:
    labels = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
              for o in platform if o["kind"] in {"Deployment", "StatefulSet"}}
    policies = [p for p in platform if p["kind"] == "NetworkPolicy" and _selects(p["spec"]["podSelector"], labels[SERVER])]
    assert len(policies) == 1, [p["metadata"]["name"] for p in policies]
    (policy,) = policies
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # In: pods that carry the client label, on the server's port only.
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": PORT}]
    assert rule["from"] and all(set(peer) == {"podSelector"} for peer in rule["from"])
    assert not any(_selects(peer["podSelector"], labels[name]) for peer in rule["from"] for name in labels), (
        "a platform server labelled as a client of the model server")
    # Out: the MLflow pods on 5000, and the cluster DNS on 53.
    mlflow_rules = [r for r in policy["spec"]["egress"] if any(
        set(peer) == {"podSelector"} and _selects(peer["podSelector"], labels["isrn-mlflow"]) for peer in r["to"])]
    assert [r["ports"] for r in mlflow_rules] == [[{"protocol": "TCP", "port": 5000}]]
    for other in [r for r in policy["spec"]["egress"] if r not in mlflow_rules]:
        assert {p["port"] for p in other["ports"]} == {53}, f"egress beyond MLflow and DNS: {other}"
        for peer in other["to"]:
            assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
            assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
