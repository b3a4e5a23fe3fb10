"""The KubeRay objects (RayCluster, RayJob) of every overlay, against their CRDs' fields.

The fields of the KubeRay CRDs (ray.io/v1) that the manifests may use are written below as JSON
Schemas.

Taken from KubeRay's Go types (ray-operator/apis/ray/v1/raycluster_types.go, rayjob_types.go,
v1.5). `required` is the strictest over the CRD versions: `rayStartParams` was required before
KubeRay 1.4, `minReplicas`/`maxReplicas` have defaults but a worker group without bounds would
not autoscale as meant. Unknown fields are refused here because the API server would silently
prune them from a custom resource: a misspelt `shutdownAfterJobFinishes` would leave a GPU
cluster running. Pod templates are not described here: the tests validate them against the
Kubernetes PodTemplateSpec schema.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]

_POD_TEMPLATE = {"type": "object", "required": ["spec"]}
_INT = {"type": "integer", "minimum": 0}

_HEAD_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "additionalProperties": False,
    "properties": {
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "headService": {"type": "object"},
        "enableIngress": {"type": "boolean"},
        "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
        "template": _POD_TEMPLATE,
    },
}

_WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _INT,
        "minReplicas": _INT,
        "maxReplicas": {"type": "integer", "minimum": 1},
        "numOfHosts": {"type": "integer", "minimum": 1},
        "suspend": {"type": "boolean"},
        "idleTimeoutSeconds": _INT,
        "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
        "template": _POD_TEMPLATE,
        "scaleStrategy": {"type": "object"},
    },
}

RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "headGroupSpec": _HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "resources": {"type": "object"},
                "image": {"type": "string"},
                "imagePullPolicy": {"type": "string"},
                "env": {"type": "array"},
                "envFrom": {"type": "array"},
                "volumeMounts": {"type": "array"},
                "securityContext": {"type": "object"},
                "idleTimeoutSeconds": _INT,
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "version": {"enum": ["v1", "v2"]},
            },
        },
        "authOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {"enum": ["disabled", "token"]},
                "secretName": {"type": "string"},
                "enableK8sTokenAuth": {"type": "boolean"},
            },
        },
        "headServiceAnnotations": {"type": "object"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "managedBy": {"type": "string"},
        "suspend": {"type": "boolean"},
    },
}

RAY_JOB_SPEC = {
    "type": "object",
    "required": ["entrypoint", "rayClusterSpec"],
    "additionalProperties": False,
    "properties": {
        "entrypoint": {"type": "string", "minLength": 1},
        "rayClusterSpec": RAY_CLUSTER_SPEC,
        "clusterSelector": {"type": "object"},
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "ttlSecondsAfterFinished": _INT,
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": _INT,
        "submitterPodTemplate": _POD_TEMPLATE,
        "submitterConfig": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"backoffLimit": _INT},
        },
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "runtimeEnvYAML": {"type": "string"},
        "jobId": {"type": "string"},
        "metadata": {"type": "object"},
        "entrypointResources": {"type": "string"},
        "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"},
        "deletionStrategy": {"type": "object"},
        "managedBy": {"type": "string"},
        "suspend": {"type": "boolean"},
    },
}

SCHEMAS = {"RayCluster": RAY_CLUSTER_SPEC, "RayJob": RAY_JOB_SPEC}


def _ray_objects(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["apiVersion"].startswith("ray.io/")]


def _cluster_spec(obj: dict) -> dict:
    return obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]


def _ray_containers(spec: dict):
    """(group name, pod spec, container) of every Ray container of a RayCluster spec."""
    head = spec["headGroupSpec"]["template"]["spec"]
    yield "head", head, head["containers"][0]
    for group in spec.get("workerGroupSpecs", []):
        pod = group["template"]["spec"]
        yield group["groupName"], pod, pod["containers"][0]


def test_every_overlay_has_ray_objects(objects: list[dict]) -> None:
    assert _ray_objects(objects), "no RayCluster or RayJob rendered"


def test_ray_objects_match_the_crd_fields(objects: list[dict]) -> None:
    for obj in _ray_objects(objects):
        assert obj["apiVersion"] == "ray.io/v1", obj["apiVersion"]
        assert obj["kind"] in SCHEMAS, f"no check written for {obj['kind']}"
        assert obj["metadata"].get("name"), obj
        try:
            jsonschema.validate(obj["spec"], SCHEMAS[obj["kind"]])
        except jsonschema.ValidationError as error:
            where = "/".join(str(p) for p in error.absolute_path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: spec/{where}: {error.message}")


def test_worker_groups_autoscale_within_bounds(objects: list[dict]) -> None:
    for obj in _ray_objects(objects):
        spec = _cluster_spec(obj)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["rayVersion"] == "2.60.0"
        for group in spec["workerGroupSpecs"]:
            low, high = group["minReplicas"], group["maxReplicas"]
            assert low <= group.get("replicas", low) <= high, group["groupName"]


def test_ray_containers_have_resources_shm_and_settings(objects: list[dict]) -> None:
    for obj in _ray_objects(objects):
        for group, pod, container in _ray_containers(_cluster_spec(obj)):
            where = f"{obj['kind']}/{obj['metadata']['name']} {group}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], where
            # /dev/shm is a memory volume: Ray's object store and DataLoader workers need more
            # than a container's 64 MiB.
            shm = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert shm, f"{where}: no /dev/shm volume"
            (volume,) = [v for v in pod["volumes"] if v["name"] == shm[0]]
            assert volume["emptyDir"]["medium"] == "Memory", where
            sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
            assert {"isrn-platform", "isrn-s3"} <= sources, f"{where}: envFrom {sources}"


def test_gpu_workers_only_in_prod(overlay: str, objects: list[dict]) -> None:
    for obj in _ray_objects(objects):
        spec = _cluster_spec(obj)
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"], "the head is CPU only"
        for group, pod, container in _ray_containers(spec):
            if group == "head":
                continue
            gpus = container["resources"]["limits"].get("nvidia.com/gpu")
            if overlay.startswith("prod"):
                assert gpus == "1", group
                assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, group
                assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), group
            else:
                assert gpus is None, f"{overlay}: {group} asks for a GPU"


def test_rayjobs_shut_their_cluster_down(objects: list[dict]) -> None:
    for job in (o for o in objects if o["kind"] == "RayJob"):
        assert job["spec"]["shutdownAfterJobFinishes"] is True, job["metadata"]["name"]
        assert job["spec"]["ttlSecondsAfterFinished"] > 0, job["metadata"]["name"]


def test_rayjobs_run_isrn_with_a_spec_of_the_repository(objects: list[dict]) -> None:
    jobs = [o for o in objects if o["kind"] == "RayJob"]
    for job in jobs:
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[0] == "isrn" and argv[1] in {"train", "tune"}, argv
        spec_file = argv[2]
        assert re.fullmatch(r"jobs/specs/[\w.-]+\.yaml", spec_file), spec_file
        assert (REPO / spec_file).is_file(), f"{job['metadata']['name']} runs {spec_file}, which is not in the repository"
    assert not jobs or {shlex.split(j["spec"]["entrypoint"])[1] for j in jobs} == {"train", "tune"}


def test_rayjob_clusters_are_the_overlays_raycluster(render, jobs_overlay: str) -> None:
    """Each RayJob's rayClusterSpec is a copy of the RayCluster's spec of its platform overlay."""
    (cluster,) = [o for o in render(jobs_overlay.removesuffix("/jobs")) if o["kind"] == "RayCluster"]
    for job in render(jobs_overlay):
        assert job["spec"]["rayClusterSpec"] == cluster["spec"], (
            f"{job['metadata']['name']}: rayClusterSpec differs from RayCluster {cluster['metadata']['name']} "
            "(k8s/base/raycluster.yaml, k8s/jobs/rayjob-*.yaml and the overlays' patches)"
        )
