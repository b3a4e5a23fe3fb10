"""Every rendered overlay of k8s/: core kinds against the Kubernetes schemas; every ConfigMap,
Secret (and key), service account and image that a manifest names exists; and the policies a first
production deploy needs: cluster-internal Services, NetworkPolicies in front of MLflow
and PostgreSQL, container resources a node can honour, images pinned, S3 through IAM roles."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import kubernetes_validate
import pytest

REPO = Path(__file__).resolve().parents[2]
# The oldest Kubernetes the manifests promise to work on (EKS standard support, kind's default).
KUBERNETES_VERSION = "1.31"
# The project's own image: platform/Dockerfile (CPU and CUDA builds under one repository name),
# tagged VERSION-cpu / VERSION-cuda (or one tag for both, e.g. `dev`), optionally by digest.
PLATFORM_IMAGE = re.compile(r"(?:.+/)?isrn-platform:(?P<tag>[\w.-]+)(?:@sha256:[0-9a-f]{64})?")
# Kubernetes quantity suffixes ("500m", "48Gi").
SUFFIX = {"m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def pod_templates(node, path: str = ""):
    """(path, pod template) for every pod template (a mapping whose spec has containers) in node."""
    if isinstance(node, dict):
        if isinstance(node.get("spec"), dict) and "containers" in node["spec"] and "kind" not in node:
            yield path, node
        for key, value in node.items():
            yield from pod_templates(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pod_templates(value, f"{path}/{i}")


def containers(obj: dict):
    for path, template in pod_templates(obj):
        spec = template["spec"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{obj['kind']}/{obj['metadata']['name']}{path} {c['name']}", spec, c


def _validate(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {error.message}")


def test_core_kinds_match_the_kubernetes_schemas(objects: list[dict]) -> None:
    core = [o for o in objects if not o["apiVersion"].startswith("ray.io/")]
    assert core or all(o["kind"] == "RayJob" for o in objects)
    for obj in core:
        _validate(obj)


def test_pod_templates_of_custom_resources_match_the_kubernetes_schemas(objects: list[dict]) -> None:
    """KubeRay's CRDs embed core PodTemplateSpecs: validate each as a v1 PodTemplate."""
    for obj in (o for o in objects if o["apiVersion"].startswith("ray.io/")):
        templates = list(pod_templates(obj))
        # A RayJob that runs on an existing RayCluster (clusterSelector) has no pod of its own.
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert templates or "clusterSelector" in obj["spec"], f"{where}: no pod template"
        for path, template in templates:
            name = f"{obj['metadata']['name']}{path.replace('/', '-')}".lower()[:63].strip("-")
            _validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template})


def test_everything_is_in_the_isrn_namespace(objects: list[dict]) -> None:
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "isrn", f"{obj['kind']}/{obj['metadata']['name']}"


def _defined(objects: list[dict], kind: str) -> dict[str, set[str]]:
    return {
        o["metadata"]["name"]: {*o.get("data", {}), *o.get("stringData", {})} for o in objects if o["kind"] == kind
    }


def test_named_configmaps_secrets_and_service_accounts_exist(objects: list[dict], platform_objects) -> None:
    # A jobs overlay's RayJobs use the ConfigMap, Secrets and service account of the platform
    # overlay they run beside.
    pool = objects + platform_objects
    defined = {kind: _defined(pool, kind) for kind in ("ConfigMap", "Secret", "ServiceAccount")}
    references = 0
    for where, spec, container in containers_of(objects):
        account = spec.get("serviceAccountName")
        assert account is None or account in defined["ServiceAccount"], f"{where}: no ServiceAccount {account}"
        for kind, name, key, optional in _references(spec, container):
            references += 1
            if optional:
                continue
            assert name in defined[kind], f"{where}: {kind} {name} is not defined"
            assert key is None or key in defined[kind][name], f"{where}: {kind} {name} has no key {key}"
    assert references or not list(containers_of(objects))


def containers_of(objects: list[dict]):
    for obj in objects:
        yield from containers(obj)


def _references(spec: dict, container: dict):
    """(kind, name, key or None, optional) of every ConfigMap and Secret a container uses."""
    for source in container.get("envFrom", []):
        for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if field in source:
                yield kind, source[field]["name"], None, source[field].get("optional", False)
    for var in container.get("env", []):
        for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            ref = var.get("valueFrom", {}).get(field)
            if ref:
                yield kind, ref["name"], ref["key"], ref.get("optional", False)
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"], None, volume["secret"].get("optional", False)
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], None, volume["configMap"].get("optional", False)


def test_images_are_the_platform_build_or_pinned(objects: list[dict]) -> None:
    """The platform image is built from platform/Dockerfile; any other image has a fixed tag.

    Registries are not reachable from the tests: a third-party image's existence is checked by
    its pinned tag here and by pulling it on a cluster (k8s/README.md)."""
    assert (REPO / "platform" / "Dockerfile").is_file()
    for where, _, container in containers_of(objects):
        image = container["image"]
        if PLATFORM_IMAGE.fullmatch(image):
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{where}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{where}: {image} is not pinned"


def test_the_platform_image_is_used_under_its_build_names(objects: list[dict]) -> None:
    """`isrn-platform` / `isrn-platform-cpu` are placeholders that each overlay maps to a build."""
    images = {c["image"] for _, _, c in containers_of(objects)}
    assert not images & {"isrn-platform", "isrn-platform-cpu"}, "an overlay left a placeholder image"
    assert any(PLATFORM_IMAGE.fullmatch(i) for i in images) or not images


def test_cpu_and_cuda_builds_are_one_version(overlay: str, objects: list[dict], platform_objects) -> None:
    """The MLflow server (cpu build) and the Ray pods (cuda build) run the same release; in prod
    each is pinned by digest: a pushed-again tag with IfNotPresent leaves nodes on different
    builds."""
    images = {c["image"] for _, _, c in containers_of(objects + platform_objects)}
    builds = [m for m in map(PLATFORM_IMAGE.fullmatch, sorted(images)) if m]
    versions = {re.sub(r"-(cpu|cuda)$", "", m["tag"]) for m in builds}
    assert len(versions) == 1, f"platform images of more than one version: {sorted(images)}"
    if overlay.startswith("prod"):
        assert all("@sha256:" in m.group(0) for m in builds), f"not pinned by digest: {sorted(images)}"


def test_mlflow_server_serves_s3_artifacts_from_a_postgres_store(overlay: str, objects: list[dict]) -> None:
    if overlay.endswith("/jobs"):
        return
    (server,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "isrn-mlflow"]
    container = server["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--serve-artifacts" in args and "--app-name=basic-auth" in args
    assert "--artifacts-destination=s3://$(ISRN_MLFLOW_BUCKET)/mlflow" in args
    assert any(a.startswith("--allowed-hosts=") and "localhost:5000" in a for a in args)
    env = {e["name"]: e for e in container["env"]}
    # The driver is named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, not in the image.
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg2://")
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "isrn-mlflow-db"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"  # no Huey consumers
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "isrn-mlflow"]
    assert service["spec"]["ports"][0]["port"] == 5000
    (db,) = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "isrn-postgres"]
    assert db["spec"]["volumeClaimTemplates"]


def test_mlflow_database_follows_the_release_and_the_secret(overlay: str, objects: list[dict]) -> None:
    """The schema is migrated before the server starts; PostgreSQL takes the
    Secret's password at every start (item 7) and is ready only once it answers on TCP (item 9)."""
    if overlay.endswith("/jobs"):
        return
    (server,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "isrn-mlflow"]
    init = {c["name"]: " ".join(c["command"]) for c in server["spec"]["template"]["spec"]["initContainers"]}
    assert "mlflow db upgrade" in init["db-upgrade"] and "mlflow.server.auth db upgrade" in init["db-upgrade"]
    assert server["spec"]["strategy"]["type"] == "Recreate", "an old server would run on the migrated schema"
    (db,) = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "isrn-postgres"]
    postgres = db["spec"]["template"]["spec"]["containers"][0]
    assert "-h 127.0.0.1" in " ".join(postgres["readinessProbe"]["exec"]["command"])
    start = " ".join(postgres["lifecycle"]["postStart"]["exec"]["command"])
    assert "\\getenv pw POSTGRES_PASSWORD" in start and "ALTER ROLE CURRENT_USER PASSWORD :'pw'" in start


def test_s3_endpoint_is_in_cluster_locally_and_aws_in_prod(overlay: str, objects: list[dict]) -> None:
    if overlay.endswith("/jobs"):
        return
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "isrn-platform"]
    data = config["data"]
    assert data["MLFLOW_TRACKING_URI"] == "http://isrn-mlflow:5000"
    assert {"ISRN_SHARDS_BUCKET", "ISRN_CHECKPOINTS_BUCKET", "ISRN_MLFLOW_BUCKET", "AWS_DEFAULT_REGION"} <= set(data)
    if overlay == "local":
        assert data["AWS_ENDPOINT_URL"] == "http://isrn-s3:8333"
        assert any(o["kind"] == "Service" and o["metadata"]["name"] == "isrn-s3" for o in objects)
    else:
        assert "AWS_ENDPOINT_URL" not in data, "unset means AWS S3"


# ---- policies ------------------------------------------------------------------------------------

def quantity(value: str | int | float) -> Fraction:
    """A Kubernetes quantity as a number: "500m" -> 1/2, "48Gi" -> 48 * 2**30."""
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return Fraction(number) * (SUFFIX[suffix] if suffix else 1)


def test_services_stay_inside_the_cluster(objects: list[dict]) -> None:
    """No LoadBalancer or NodePort, no Ingress: users come in through `kubectl port-forward`."""
    assert not [o for o in objects if o["kind"] == "Ingress"]
    for obj in objects:
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service/{obj['metadata']['name']}"
        for path, group in _head_groups(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}{path}"
            assert group.get("serviceType", "ClusterIP") == "ClusterIP", where
            assert group.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP", where
            assert not group.get("enableIngress"), where


def _head_groups(node, path: str = ""):
    if isinstance(node, dict):
        if "headGroupSpec" in node:
            yield f"{path}/headGroupSpec", node["headGroupSpec"]
        for key, value in node.items():
            yield from _head_groups(value, f"{path}/{key}")


# The Deployments besides the Ray pods that MLflow lets in: the model server (k8s/base/serving.yaml).
MLFLOW_CLIENT_DEPLOYMENTS = {"isrn-serve"}


def test_networkpolicies_guard_mlflow_and_postgres(overlay: str, objects: list[dict], render) -> None:
    """PostgreSQL takes connections from the MLflow server only, MLflow from the Ray pods and the
    model server only; every Ray pod of the platform and its RayJobs carries the
    client label."""
    if overlay.endswith("/jobs"):
        return
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    labels = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
              for o in objects if o["kind"] in {"Deployment", "StatefulSet"}}
    allowed = {}
    for server in ("isrn-postgres", "isrn-mlflow"):
        guarding = [p for p in policies if _selects(p["spec"]["podSelector"], labels[server])]
        assert guarding, f"no NetworkPolicy selects the {server} pods"
        for policy in guarding:
            assert "Ingress" in policy["spec"]["policyTypes"], policy["metadata"]["name"]
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"NetworkPolicy/{policy['metadata']['name']}: a rule open to every source"
                assert all(set(peer) == {"podSelector"} for peer in rule["from"]), "only pods of this namespace"
        allowed[server] = [peer["podSelector"] for p in guarding for r in p["spec"]["ingress"] for peer in r["from"]]
    assert all(_selects(s, labels["isrn-mlflow"]) for s in allowed["isrn-postgres"])
    for name, template in _ray_pod_templates(objects + render(f"{overlay}/jobs")):
        assert any(_selects(s, template.get("metadata", {}).get("labels", {})) for s in allowed["isrn-mlflow"]), (
            f"{name}: the MLflow NetworkPolicy does not let this Ray pod in")
    for name, template in labels.items():
        admitted = any(_selects(s, template) for s in allowed["isrn-mlflow"])
        if name in MLFLOW_CLIENT_DEPLOYMENTS:
            assert admitted, f"{name}: the MLflow NetworkPolicy does not let it in"
        elif name != "isrn-mlflow":
            assert not admitted, f"{name} may reach MLflow"


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"selector not modelled here: {selector}"
    return bool(selector.get("matchLabels")) and selector["matchLabels"].items() <= labels.items()


def _ray_pod_templates(objects: list[dict]):
    for obj in (o for o in objects if o["apiVersion"].startswith("ray.io/")):
        for path, template in pod_templates(obj):
            if "submitterPodTemplate" not in path:
                yield f"{obj['kind']}/{obj['metadata']['name']}{path}", template


def test_container_resources_are_ones_a_node_can_honour(objects: list[dict]) -> None:
    """GPU requests equal limits (Kubernetes refuses others), CPU requests do not exceed limits,
    and /dev/shm, a memory volume that counts against the memory limit, stays below it."""
    for where, spec, container in containers_of(objects):
        requests = container.get("resources", {}).get("requests", {})
        limits = container.get("resources", {}).get("limits", {})
        if "nvidia.com/gpu" in requests or "nvidia.com/gpu" in limits:
            assert requests.get("nvidia.com/gpu") == limits.get("nvidia.com/gpu"), f"{where}: GPU request != limit"
        if "cpu" in requests and "cpu" in limits:
            assert quantity(requests["cpu"]) <= quantity(limits["cpu"]), f"{where}: CPU request above its limit"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] == "/dev/shm":
                size = volumes[mount["name"]]["emptyDir"]["sizeLimit"]
                assert "memory" in limits and quantity(size) < quantity(limits["memory"]), (
                    f"{where}: /dev/shm {size} is not below the memory limit {limits.get('memory')}")


def test_s3_access_can_come_from_an_iam_role(overlay: str, objects: list[dict], platform_objects) -> None:
    """The static-key Secret is optional in every pod that reads it, so an IAM role for the pod's
    service account (IRSA) can replace it; prod gives both service accounts one."""
    accounts = {o["metadata"]["name"]: o for o in platform_objects if o["kind"] == "ServiceAccount"}
    for where, spec, container in containers_of(objects):
        refs = [s["secretRef"] for s in container.get("envFrom", []) if "secretRef" in s]
        static = [ref for ref in refs if ref["name"] == "isrn-s3"]
        if not static or where.startswith("StatefulSet/isrn-s3"):  # the local S3 itself needs its keys
            continue
        assert static[0].get("optional") is True, f"{where}: isrn-s3 is mandatory"
        account = accounts[spec["serviceAccountName"]]
        if overlay.startswith("prod"):
            role = account["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
            assert role.startswith("arn:aws:iam::"), f"{where}: {spec['serviceAccountName']} has no IAM role"
    has_static = any(o["kind"] == "Secret" and o["metadata"]["name"] == "isrn-s3" for o in platform_objects)
    assert has_static is not overlay.startswith("prod"), "prod uses IAM roles, local the SeaweedFS keys"
