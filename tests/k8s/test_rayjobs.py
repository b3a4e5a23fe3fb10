"""The RayJobs of every jobs overlay run: each entrypoint is an `isrn` command that accepts its spec
(run here with `--dry-run`, as in the image), writes to the overlay's buckets, and fits on the Ray
cluster it runs on.

The placement check counts Ray resources per pod the way KubeRay starts the pods: `num-cpus` from
rayStartParams, else the container's CPU limit, else its request, rounded up; GPUs from `num-gpus`,
else the `nvidia.com/gpu` limit; the head once, each worker group `maxReplicas` times. It asks for
what `isrn` reserves: a Train worker `scaling.cpus_per_worker` CPUs (and a GPU with `use_gpu`);
a job's driver, the Jobs API entrypoint, nothing (it runs on the head); a Tune trial's driver
`tune.trial_cpus`, for as many trials at once as jobs/tune/study.py `max_concurrent_trials` runs
on the whole cluster. Bundles are packed first-fit, largest first.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jobs.cli import main
from jobs.spec import JobSpec, load_spec
from jobs.cluster import pack
from jobs.tune.study import max_concurrent_trials

# The image's working directory (ISRN_HOME) holds the repository's jobs/specs: entrypoints name
# specs relative to it, as they are relative to the repository here.
REPO = Path(__file__).resolve().parents[2]
BUCKETS = {"data.shards": "ISRN_SHARDS_BUCKET", "checkpoint.storage": "ISRN_CHECKPOINTS_BUCKET"}


def _command(job: dict) -> tuple[str, str]:
    """(isrn subcommand, spec path) of a RayJob's entrypoint."""
    argv = shlex.split(job["spec"]["entrypoint"])
    # The run (study) is named after the RayJob, so that a retry continues it.
    name_flag = {"train": "--run-name", "tune": "--name"}.get(argv[1])
    assert argv[0] == "isrn" and name_flag and argv[3:] == [name_flag, job["metadata"]["name"]], argv
    assert re.fullmatch(r"jobs/specs/[\w.-]+\.yaml", argv[2]), argv[2]
    return argv[1], argv[2]


def test_a_rayjob_with_a_cluster_of_its_own_retries_its_pinned_run(jobs_overlay: str, objects: list[dict]) -> None:
    """A lost head pod or driver retries the job on a new cluster, which continues the run by its
    pinned name; KubeRay refuses retries on an existing cluster (clusterSelector)."""
    for job in (o for o in objects if o["kind"] == "RayJob"):
        _command(job)  # names its run after the RayJob
        own_cluster = "rayClusterSpec" in job["spec"]
        assert (job["spec"].get("backoffLimit", 0) >= 1) is own_cluster, (job["metadata"]["name"], job["spec"])


def test_jobs_overlays_run_train_and_tune(render, jobs_overlay: str) -> None:
    commands = sorted(_command(job)[0] for job in render(jobs_overlay) if job["kind"] == "RayJob")
    assert commands == ["train", "tune"], commands


def test_entrypoints_run_dry_against_their_spec_and_the_overlays_buckets(
    jobs_overlay: str, objects: list[dict], overlay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each entrypoint with --dry-run appended, in the environment of the overlay's ConfigMap:
    the spec validates (a tune spec needs a tune: section), and every s3:// URL of the resolved
    spec, what MLflow logs, is in the bucket the overlay names for it."""
    monkeypatch.chdir(REPO)
    env = {name: overlay_env[name] for name in BUCKETS.values()}
    for job in (o for o in objects if o["kind"] == "RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        result = CliRunner().invoke(main, [*argv[1:], "--dry-run"], env=env)
        assert result.exit_code == 0, f"{job['spec']['entrypoint']} --dry-run:\n{result.output}"
        resolved = yaml.safe_load(result.stdout)
        urls = dict(_s3_urls(resolved))
        assert set(BUCKETS) <= set(urls), f"{job['metadata']['name']}: no S3 storage in {urls}"
        for field, url in urls.items():
            bucket = url.removeprefix("s3://").split("/")[0]
            allowed = {env[BUCKETS[field]]} if field in BUCKETS else set(env.values())
            assert bucket in allowed, f"{job['metadata']['name']}: {field} = {url}, the overlay's buckets: {allowed}"


def _s3_urls(node, field: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _s3_urls(value, f"{field}.{key}" if field else key)
    elif isinstance(node, str) and node.startswith("s3://"):
        yield field, node


# ---- placement ---------------------------------------------------------------------------------------

def ray_pods(cluster: dict) -> list[dict[str, float]]:
    """The Ray resources of every pod the cluster can grow to, as KubeRay starts them (see above)."""
    groups = [(cluster["headGroupSpec"], 1)] + [(g, g["maxReplicas"]) for g in cluster.get("workerGroupSpecs", [])]
    pods = []
    for group, count in groups:
        params = group.get("rayStartParams", {})
        resources = group["template"]["spec"]["containers"][0]["resources"]
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        cpus = params.get("num-cpus") or limits.get("cpu") or requests.get("cpu") or "0"
        gpus = params.get("num-gpus") or limits.get("nvidia.com/gpu") or "0"
        cpus = int(cpus[:-1]) / 1000 if cpus.endswith("m") else float(cpus)
        pods += [{"CPU": float(math.ceil(cpus)), "GPU": float(gpus)} for _ in range(count)]
    return pods


def job_bundles(command: str, spec: JobSpec, pods: list[dict[str, float]]) -> list[dict[str, float]]:
    """What the job reserves at once on that cluster (see above)."""
    workers = [{"CPU": spec.scaling.cpus_per_worker, "GPU": float(spec.scaling.use_gpu)}
               for _ in range(spec.scaling.num_workers)]
    if command == "train":
        return workers  # Train V2's controller actor takes 0 CPUs too
    trials = max_concurrent_trials(spec, pods)
    return [b for _ in range(trials) for b in [{"CPU": spec.tune.trial_cpus, "GPU": 0.0}, *workers]]


def test_every_rayjob_fits_within_its_clusters_max_replicas(jobs_overlay: str, job_clusters) -> None:
    assert job_clusters
    for job, cluster in job_clusters:
        command, path = _command(job)
        spec = load_spec(REPO / path)
        pods = ray_pods(cluster)
        bundles = job_bundles(command, spec, pods)
        assert pack(bundles, pods) is not None, (
            f"{job['metadata']['name']} ({command} {path}) cannot be placed: it asks {bundles}, "
            f"the cluster's pods at maxReplicas offer {pods}")


def test_train_workers_fill_whole_gpu_pods(jobs_overlay: str, job_clusters) -> None:
    """A GPU job's Train workers, one GPU each, fill whole worker pods of its cluster, no more pods
    than maxReplicas: workers × 1 GPU = pods × GPUs per pod. A pod left part-empty would hold idle
    GPUs of a node that no other pod can use; one pod too many would wait forever."""
    checked = 0
    for job, cluster in job_clusters:
        command, path = _command(job)
        spec = load_spec(REPO / path)
        if not spec.scaling.use_gpu:
            continue
        groups = [g for g in cluster["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
        assert len(groups) == 1, f"{job['metadata']['name']}: {len(groups)} GPU worker groups"
        (group,) = groups
        gpus_per_pod = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        pods, rest = divmod(spec.scaling.num_workers * 1, gpus_per_pod)
        where = (f"{job['metadata']['name']} ({path}): {spec.scaling.num_workers} workers × 1 GPU "
                 f"on pods of {gpus_per_pod} GPUs, maxReplicas {group['maxReplicas']}")
        assert rest == 0, f"{where}: a pod part-empty"
        assert 1 <= pods <= group["maxReplicas"], f"{where}: needs {pods} pods"
        checked += 1
    assert checked or not jobs_overlay.startswith("prod"), "prod runs its jobs on GPUs"


def test_the_placement_check_sees_a_trial_driver_without_a_cpu(render) -> None:
    """With all of the GPU pod's 88 CPUs given to Train workers, a trial's driver
    needs a second pod that maxReplicas forbids."""
    (job,) = [j for j in render("prod/jobs") if _command(j)[0] == "tune"]
    pods = ray_pods(job["spec"]["rayClusterSpec"])
    assert pods[1:] == [{"CPU": 88.0, "GPU": 8.0}], pods  # the head (0 CPUs), then one whole node
    # 10.95 CPUs per worker leave 0.4 on the pod: the driver's 1 CPU does not fit (study.py packs per pod).
    for cpus, total in ((10.95, 88.6), (11, 89)):
        with pytest.raises(ValueError, match=f"a trial needs {total:g} CPUs"):
            job_bundles("tune", load_spec(REPO / _command(job)[1], [f"scaling.cpus_per_worker={cpus}"]), pods)
