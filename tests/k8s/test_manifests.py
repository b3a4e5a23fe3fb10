"""Every rendered overlay of k8s/: core kinds against the Kubernetes schemas, and every
ConfigMap, Secret (and key) and image that a manifest names exists."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest

REPO = Path(__file__).resolve().parents[2]
# The oldest Kubernetes the manifests promise to work on (EKS standard support, kind's default).
KUBERNETES_VERSION = "1.31"
# The project's own image: platform/Dockerfile (CPU and CUDA builds under one repository name).
PLATFORM_IMAGE = re.compile(r"(?:.+/)?isrn-platform:[\w.-]+")


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
        assert templates, f"{obj['kind']}/{obj['metadata']['name']}: no pod template"
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


def test_named_configmaps_and_secrets_exist_with_their_keys(render, overlay: str, objects: list[dict]) -> None:
    # A jobs overlay's RayJobs use the ConfigMap and Secrets of the platform overlay they run beside.
    pool = objects + (render(overlay.removesuffix("/jobs")) if overlay.endswith("/jobs") else [])
    defined = {"ConfigMap": _defined(pool, "ConfigMap"), "Secret": _defined(pool, "Secret")}
    references = 0
    for where, spec, container in containers_of(objects):
        for kind, name, key, optional in _references(spec, container):
            references += 1
            if optional:
                continue
            assert name in defined[kind], f"{where}: {kind} {name} is not defined"
            assert key is None or key in defined[kind][name], f"{where}: {kind} {name} has no key {key}"
    assert references


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
    assert any(PLATFORM_IMAGE.fullmatch(i) for i in images)


def test_mlflow_server_serves_s3_artifacts_from_a_postgres_store(overlay: str, objects: list[dict]) -> None:
    if overlay.endswith("/jobs"):
        return
    (server,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "isrn-mlflow"]
    container = server["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert "--serve-artifacts" in args
    assert "--artifacts-destination=s3://$(ISRN_MLFLOW_BUCKET)/mlflow" in args
    assert any(a.startswith("--allowed-hosts=") and "localhost:5000" in a for a in args)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "isrn-mlflow-db"
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "isrn-mlflow"]
    assert service["spec"]["ports"][0]["port"] == 5000
    (db,) = [o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "isrn-postgres"]
    assert db["spec"]["volumeClaimTemplates"]


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
