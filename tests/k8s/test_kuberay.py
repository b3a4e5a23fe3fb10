"""The KubeRay objects (RayCluster, RayJob) of every overlay: against KubeRay's own CRDs, and the
settings a first production deploy depends on.

The CRDs of the oldest and the newest supported KubeRay release are in kuberay_crds/ (source and
license in its README). Their openAPI schemas leave unknown fields open, and the API server would
prune such a field without a word: a misspelt `shutdownAfterJobFinishes` would leave a GPU cluster
running. So every object that lists its `properties` is closed here (`additionalProperties: false`)
unless the CRD marks it `x-kubernetes-preserve-unknown-fields`. Pod templates are checked in full
by the CRDs and again by test_manifests.py against Kubernetes' own PodTemplateSpec schema.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.k8s.test_manifests import quantity

REPO = Path(__file__).resolve().parents[2]
CRDS = Path(__file__).resolve().parent / "kuberay_crds"
# Release -> {CRD file: its git blob id at that tag}: the files are KubeRay's, byte for byte.
KUBERAY = {
    "v1.5.1": {  # the first release with authOptions (Ray token auth)
        "ray.io_rayclusters.yaml": "45f5406c4115ec36a2477421d2a475b8189f8701",
        "ray.io_rayjobs.yaml": "1f4c84321683e1dad850c8244fd61101ca43c170",
    },
    "v1.7.0": {
        "ray.io_rayclusters.yaml": "ff0be58ada3bd457605eff1f258c16df21e61e21",
        "ray.io_rayjobs.yaml": "c7d3f081af8cf08c256a8c33a0c3b6ea28b816a0",
    },
}
CRD_FILE = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
# Node labels that appear only after a node has booted (NVIDIA GPU feature discovery, node feature
# discovery): a pod that selects them can never make an autoscaler start a node.
LATE_NODE_LABELS = ("nvidia.com/", "feature.node.kubernetes.io/")
# A GPU worker pod holds a whole node, all the GPUs of the 8-GPU nodes prod is sized for
# (k8s/base/raycluster.yaml): its Train workers share one IPC namespace and /dev/shm, so NCCL keeps
# the all-reduce on NVLink/PCIe or shared memory instead of the pod network's sockets.
GPUS_PER_NODE = "8"
# NCCL's settings that prod's GPU workers read (k8s/overlays/prod/nccl.env); its debugging switches
# must not stay set (NVIDIA's guide), nor the name torch 2.2 deprecated.
NCCL_SETTINGS = {"NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING"}
NCCL_NOT_IN_PRODUCTION = {"NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_ASYNC_ERROR_HANDLING"}


def _closed(schema: dict) -> dict:
    """The openAPI schema with unknown fields refused wherever it lists `properties` (see above)."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {name: _closed(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            schema[key] = _closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_closed(sub) for sub in schema[key]]
    return schema


@functools.cache
def crd_validator(release: str, kind: str) -> jsonschema.Draft4Validator:
    """A strict validator of the ray.io/v1 `kind` of that KubeRay release (openAPI v3 ~ draft 4)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the files are 0.9 to 1.4 MB
    crd = yaml.load((CRDS / release / CRD_FILE[kind]).read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft4Validator(_closed(served["schema"]["openAPIV3Schema"]))


def crd_errors(obj: dict, release: str) -> list[str]:
    errors = crd_validator(release, obj["kind"]).iter_errors(obj)
    return sorted(f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors)


def _ray_objects(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["apiVersion"].startswith("ray.io/")]


def _own_clusters(objects: list[dict]) -> list[tuple[str, dict]]:
    """(name, spec) of every Ray cluster these objects create: RayClusters, RayJobs' rayClusterSpec."""
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"].get("rayClusterSpec", o["spec"]))
            for o in _ray_objects(objects) if o["kind"] == "RayCluster" or "rayClusterSpec" in o["spec"]]


def _ray_pods(spec: dict):
    """(group name, pod spec, Ray container) of every group of a RayCluster spec, head first."""
    head = spec["headGroupSpec"]["template"]["spec"]
    yield "head", head, head["containers"][0]
    for group in spec.get("workerGroupSpecs", []):
        pod = group["template"]["spec"]
        yield group["groupName"], pod, pod["containers"][0]


# ---- KubeRay's CRDs --------------------------------------------------------------------------------

@pytest.mark.parametrize("release", sorted(KUBERAY))
def test_crd_files_are_kuberays_own(release: str) -> None:
    for name, blob in KUBERAY[release].items():
        data = (CRDS / release / name).read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, f"{release}/{name} was changed"
        assert blob in (CRDS / "README.md").read_text(), f"{release}/{name}: not in kuberay_crds/README.md"


def test_every_overlay_has_ray_objects(objects: list[dict]) -> None:
    assert _ray_objects(objects), "no RayCluster or RayJob rendered"


@pytest.mark.parametrize("release", sorted(KUBERAY))
def test_ray_objects_match_kuberays_crds(objects: list[dict], release: str) -> None:
    for obj in _ray_objects(objects):
        assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] in CRD_FILE, f"{obj['apiVersion']} {obj['kind']}"
        errors = crd_errors(obj, release)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']} against KubeRay {release}:\n" + "\n".join(errors)


def test_the_crd_check_refuses_unknown_and_too_new_fields(render) -> None:
    """What the hand-written schema let through: a misspelt field, and one that 1.5.1 lacks."""
    (job, _) = render("prod/jobs")
    misspelt = copy.deepcopy(job)
    misspelt["spec"]["shutdownAfterJobFinish"] = misspelt["spec"].pop("shutdownAfterJobFinishes")
    for release in KUBERAY:
        assert any("'shutdownAfterJobFinish' was unexpected" in e for e in crd_errors(misspelt, release))
    newer = copy.deepcopy(job)
    newer["spec"]["rayClusterSpec"]["authOptions"]["enableK8sTokenAuth"] = False
    assert any("'enableK8sTokenAuth' was unexpected" in e for e in crd_errors(newer, "v1.5.1"))
    assert not crd_errors(newer, "v1.7.0")


# ---- the settings the deploy depends on -------------------------------------------------------------

def test_ray_clusters_use_token_auth(objects: list[dict], job_clusters) -> None:
    """Every Ray cluster, and so every RayJob's submitter, runs with Ray token authentication."""
    clusters = _own_clusters(objects) + [(f"RayJob/{j['metadata']['name']}", c) for j, c in job_clusters]
    assert clusters
    for name, spec in clusters:
        assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: no token auth"


def test_ray_clusters_autoscale_with_autoscaler_v2(objects: list[dict]) -> None:
    ray_pin = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in ray_pin if d.startswith("ray[")]
    for name, spec in _own_clusters(objects):
        assert spec["rayVersion"] == ray.split("==")[1], name
        assert spec["enableInTreeAutoscaling"] is True, name
        # Ray >= 2.60 runs autoscaler v2 under KubeRay; KubeRay configures the pods for it only
        # when told.
        assert spec["autoscalerOptions"]["version"] == "v2", name
        for group in spec["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["maxReplicas"], f"{name} {group['groupName']}"
            # `kubectl apply` would reset the autoscaler's count to it.
            assert "replicas" not in group, f"{name} {group['groupName']}: replicas belongs to the autoscaler"


def test_ray_pods_have_resources_shm_settings_and_identity(objects: list[dict]) -> None:
    for name, spec in _own_clusters(objects):
        for group, pod, container in _ray_pods(spec):
            where = f"{name} {group}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], where
            # /dev/shm is a memory volume: Ray's object store and DataLoader workers need more
            # than a container's 64 MiB (its size: test_manifests.py).
            shm = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert shm, f"{where}: no /dev/shm volume"
            (volume,) = [v for v in pod["volumes"] if v["name"] == shm[0]]
            assert volume["emptyDir"]["medium"] == "Memory", where
            sources = {next(iter(s.values()))["name"]: s for s in container["envFrom"]}
            assert {"isrn-platform", "isrn-s3", "isrn-mlflow-auth"} <= set(sources), f"{where}: envFrom {sources}"
            # Optional, so that a service account's IAM role can take the place of static keys.
            assert sources["isrn-s3"]["secretRef"].get("optional") is True, f"{where}: isrn-s3 is mandatory"
            assert pod["serviceAccountName"] == "isrn-ray", where
            # Only the head's autoscaler needs the Kubernetes API: workers run user code.
            assert pod.get("automountServiceAccountToken", False) is (group == "head"), where


def test_gpu_workers_only_in_prod_and_on_nodes_an_autoscaler_can_start(overlay: str, objects: list[dict]) -> None:
    for name, spec in _own_clusters(objects):
        for group, pod, container in _ray_pods(spec):
            gpus = container["resources"]["limits"].get("nvidia.com/gpu")
            selected = [*pod.get("nodeSelector", {}), *_affinity_keys(pod.get("affinity", {}))]
            late = [key for key in selected if key.startswith(LATE_NODE_LABELS)]
            assert not late, f"{name} {group}: selects {late}, labels a node gets only after it booted"
            if group == "head" or not overlay.startswith("prod"):
                assert gpus is None, f"{name} {group} asks for a GPU"
            else:
                assert gpus == GPUS_PER_NODE, f"{name} {group}: {gpus} GPUs a pod, not a whole node's {GPUS_PER_NODE}"
                assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", [])), f"{name} {group}"
                configs = [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s]
                assert "isrn-nccl" in configs, f"{name} {group}: no NCCL settings (ConfigMap isrn-nccl)"


def test_nccl_settings_for_the_pod_network(render) -> None:
    """prod's GPU workers read NCCL's settings from one ConfigMap (overlays/prod/nccl.env): the pod
    network's interface, sockets rather than RDMA devices the pods do not have, warnings, and
    collectives that fail instead of hanging."""
    (nccl,) = [o for o in render("prod") if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "isrn-nccl"]
    settings = nccl["data"]
    assert NCCL_SETTINGS <= set(settings), sorted(settings)
    assert not NCCL_NOT_IN_PRODUCTION & set(settings), sorted(NCCL_NOT_IN_PRODUCTION & set(settings))
    assert settings["NCCL_DEBUG"] == "WARN" and settings["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert settings["NCCL_SOCKET_IFNAME"] == settings["GLOO_SOCKET_IFNAME"], "NCCL and gloo on one interface"


def test_object_store_fits_in_dev_shm(objects: list[dict]) -> None:
    """Where a group sets Ray's object store size, /dev/shm holds it with room for the DataLoader
    batches and NCCL's segments; else Ray would put it in /tmp (slow) or leave them no room."""
    for name, spec in _own_clusters(objects):
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        for group, (group_name, pod, container) in zip(groups, _ray_pods(spec)):
            store = group.get("rayStartParams", {}).get("object-store-memory")
            if store is None:
                continue
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            shm = quantity(volume["emptyDir"]["sizeLimit"])
            assert int(store) + 8 * 2**30 <= shm, (
                f"{name} {group_name}: object store {int(store) / 2**30:g} GiB in a {float(shm) / 2**30:g} GiB /dev/shm "
                "leaves less than 8 GiB for the loaders and NCCL")


def _affinity_keys(affinity: dict) -> list[str]:
    terms = affinity.get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", {})
    return [e["key"] for t in terms.get("nodeSelectorTerms", []) for e in t.get("matchExpressions", [])]


def test_rayjobs_end(objects: list[dict], job_clusters) -> None:
    """A deadline on every RayJob, so that one that cannot get its nodes fails,
    and a cluster of its own is deleted after the job."""
    assert len(job_clusters) == sum(o["kind"] == "RayJob" for o in objects)
    for job, _ in job_clusters:
        name = f"RayJob/{job['metadata']['name']}"
        assert job["spec"].get("activeDeadlineSeconds", 0) > 0, f"{name}: no activeDeadlineSeconds"
        if "rayClusterSpec" in job["spec"]:
            assert job["spec"]["shutdownAfterJobFinishes"] is True, name
            assert job["spec"]["ttlSecondsAfterFinished"] > 0, name


def test_rayjob_clusters_are_the_overlays_raycluster(render, jobs_overlay: str) -> None:
    """Each RayJob's own rayClusterSpec is a copy of the RayCluster's spec of its platform overlay."""
    (cluster,) = [o for o in render(jobs_overlay.removesuffix("/jobs")) if o["kind"] == "RayCluster"]
    for job in render(jobs_overlay):
        if "rayClusterSpec" in job["spec"]:
            assert job["spec"]["rayClusterSpec"] == cluster["spec"], (
                f"{job['metadata']['name']}: rayClusterSpec differs from RayCluster {cluster['metadata']['name']} "
                "(k8s/base/raycluster.yaml, k8s/jobs/rayjob-*.yaml and the overlays' patches)"
            )
