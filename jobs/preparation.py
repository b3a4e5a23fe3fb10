"""Everything a job does before its first worker starts, once for training and Tune alike.

    job = prepare_job(spec, env)          # then build_trainer(...).fit() or a Tune study

In order: S3 reachable with working credentials (before anything is generated or uploaded); the
data set and shards generated when the spec asks and they are missing; both manifests readable and
the train split large enough for one optimiser step; the MLflow server answering; Ray connected;
checkpoints in shared storage when the cluster has several nodes; the cluster able to hold the
workers (waiting for the autoscaler when it can add them). Every failure is a `SpecError` naming
the field and the fix.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from data_shards.manifest import Manifest, manifest_url, read_manifest
from data_shards.storage import StorageAccessError, arrow_s3_filesystem, check_access, is_s3_url, split_s3_url
from jobs import tags
from jobs.cluster import Bundle, ClusterTooSmallError, wait_for_resources, worker_bundles
from jobs.environment import JobEnvironment
from jobs.spec import JobSpec, SpecError, SynthData

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreparedJob:
    """A spec checked against its services, with what its MLflow runs record."""

    spec: JobSpec
    env: JobEnvironment
    train_manifest: str
    val_manifest: str
    lineage: dict[str, str]
    """Run tags: commit, spec, manifest fingerprints, world size, Ray job (jobs/tags.py)."""


def prepare_job(spec: JobSpec, env: JobEnvironment, *, extra_bundles: list[Bundle] | None = None) -> PreparedJob:
    """Check and connect everything a job needs; `extra_bundles` are asked beside the workers (a Tune trial's driver)."""
    check_storage(spec, env)
    env.export_s3()  # pyarrow (Ray's checkpoint storage) and boto3 read credentials from the environment
    ensure_data(spec, env)
    fingerprints = read_fingerprints(spec, env)
    check_tracking(env)
    connect_ray(env)
    import ray

    check_checkpoint_storage(spec, ray.nodes())
    wait_for_cluster(spec, extra_bundles or [])
    lineage = {
        tags.GIT_COMMIT: code_version(), tags.SPEC: spec.name, tags.SPEC_FINGERPRINT: spec.fingerprint(),
        tags.TRAIN_MANIFEST: fingerprints["train"], tags.VAL_MANIFEST: fingerprints["val"],
        tags.WORLD_SIZE: str(spec.scaling.num_workers),
        tags.RAY_JOB_ID: ray.get_runtime_context().get_job_id(),
        tags.RAY_SUBMISSION_ID: submission_id(),
    }
    return PreparedJob(spec=spec, env=env, train_manifest=manifest_url(spec.data.shards, "train"),
                       val_manifest=manifest_url(spec.data.shards, "val"), lineage=lineage)


def check_storage(spec: JobSpec, env: JobEnvironment) -> None:
    """Shards readable, checkpoint storage writable: credentials, endpoint and buckets, named on failure."""
    try:
        check_access(spec.data.shards, env.s3, write=spec.data.synth is not None)
        if is_s3_url(spec.checkpoint.storage):
            check_access(spec.checkpoint.storage, env.s3, write=True)
    except StorageAccessError as error:
        raise SpecError(f"data.shards / checkpoint.storage: {error}") from None


def ensure_data(spec: JobSpec, env: JobEnvironment) -> None:
    """Generate the data set and build its shards when the spec asks for it and they are missing."""
    synth = spec.data.synth
    if synth is None:
        return
    missing = [split for split in ("train", "val") if _read_split_manifest(spec, split, env) is None]
    if not missing:
        return
    from data_shards.shard_writer import build_split

    root = generate_synth(synth)
    for split in missing:
        log.info("building %s shards in %s", split, spec.data.shards)
        build_split(root, split, spec.data.shards, shard_size_mb=synth.shard_size_mb, settings=env.s3,
                    progress=False)


def generate_synth(synth: SynthData) -> Path:
    """The spec's generated WIDER-format data set, generated (seeded: always the same images) unless
    it is there already; returns its root, relative paths taken from the current folder."""
    from data_shards.synth import generate_dataset

    root = synth.root.expanduser().absolute()
    if not (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").is_file():
        log.info("generating a WIDER-format data set in %s (%d train, %d val images)", root,
                 synth.train_images, synth.val_images)
        generate_dataset(root, train=synth.train_images, val=synth.val_images, seed=synth.seed,
                         config=synth.generator)
    return root


def _read_split_manifest(spec: JobSpec, split: str, env: JobEnvironment) -> Manifest | None:
    """The split's manifest, None when there is none; SpecError when it is not a valid one."""
    try:
        return read_manifest(manifest_url(spec.data.shards, split), env.s3)
    except FileNotFoundError:
        return None
    except ValueError as error:  # names the manifest and the fix
        raise SpecError(f"data.shards: {error}") from None


def read_fingerprints(spec: JobSpec, env: JobEnvironment) -> dict[str, str]:
    """The train and val manifests' annotation fingerprints; both must exist, val with its ground truth,
    and the train split must fill one optimiser step."""
    fingerprints = {}
    for split in ("train", "val"):
        url = manifest_url(spec.data.shards, split)
        manifest = _read_split_manifest(spec, split, env)
        if manifest is None:
            raise SpecError(
                f"data.shards: no {split} shard manifest at {url}; build it with "
                f"`isrn shards build --wider-root DIR --split {split} --out {spec.data.shards}` "
                f"or give the spec a data.synth section"
            )
        if split == "val" and not manifest.ground_truth:
            raise SpecError(f"data.shards: the val split at {url} carries no ground-truth .mat files")
        if split == "train":
            check_batch_fits(spec, manifest.samples, url)
        fingerprints[split] = manifest.annotation_sha256[:16]
    return fingerprints


def check_batch_fits(spec: JobSpec, train_samples: int, url: str) -> None:
    """One optimiser step takes batch × workers × accumulation images: the train split must hold them."""
    batch, workers, accum = spec.loader.batch_size, spec.scaling.num_workers, spec.train.grad_accum_steps
    if batch * workers * accum > train_samples:
        raise SpecError(
            f"loader.batch_size × scaling.num_workers × train.grad_accum_steps = {batch} × {workers} × {accum} = "
            f"{batch * workers * accum} images per optimiser step, but the train split at {url} holds "
            f"{train_samples}: lower them, or use a larger train split")


def check_checkpoint_storage(spec: JobSpec, nodes: list[dict[str, Any]]) -> None:
    """A local checkpoint path works on one node only: on several, each worker writes its own disk and a
    restarted worker group finds no checkpoint. `nodes` as `ray.nodes()` returns them."""
    storage = spec.checkpoint.storage
    if is_s3_url(storage):
        return
    working = [node for node in nodes if node.get("Alive") and any(
        (node.get("Resources") or {}).get(kind, 0) > 0 for kind in ("CPU", "GPU"))]
    if len(working) > 1:
        raise SpecError(
            f"checkpoint.storage: {storage!r} is a local path, but the cluster has {len(working)} nodes that run "
            "workers, each with its own disk: give checkpoint.storage an s3://BUCKET/prefix every node can reach")


def check_tracking(env: JobEnvironment, timeout_s: float = 5.0) -> None:
    """The MLflow server answers (its client would otherwise retry for minutes before failing)."""
    uri = env.mlflow_uri
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as error:
        raise SpecError(f"tracking: the MLflow server at {uri} (MLFLOW_TRACKING_URI) does not answer: {error}; "
                        "start the local platform (`isrn platform up`) or set MLFLOW_TRACKING_URI") from None


def connect_ray(env: JobEnvironment) -> None:
    import ray

    if ray.is_initialized():
        return
    env.use_ray_auth()
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # A driver started by the Jobs API (`isrn submit`): it runs inside the job's runtime
        # environment, and Ray refuses a second one.
        ray.init(address=env.ray_address, logging_level=logging.WARNING)
        return
    check_ray_address(env.ray_address)
    try:
        ray.init(address=env.ray_address, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise SpecError(f"no Ray cluster at {env.ray_address} (RAY_ADDRESS): {error}; start the local platform "
                        "(`isrn platform up`) or set RAY_ADDRESS") from None


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """A TCP connection to `address` when it is HOST:PORT or ray://HOST:PORT, so that a dead address fails
    at once rather than after `ray.init`'s minute of retries; other forms ("auto") are Ray's to read."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or "/" in host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise SpecError(f"no Ray cluster answers at {address} (RAY_ADDRESS): {error}; start the local platform "
                        "(`isrn platform up`) or set RAY_ADDRESS to the head's HOST:6379") from None


def submission_id() -> str:
    """The Jobs API submission id of this driver (`isrn submit`), "" when not started by the Jobs API.

    Ray hands it to the driver in the job config's metadata (`job_submission_id`, the key its own
    dashboard uses to match drivers to submissions).
    """
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return ""
    return str((config.get("metadata") or {}).get("job_submission_id", ""))


def is_local_platform() -> bool:
    """Whether the connected cluster is a local platform head (`isrn platform up` labels it)."""
    import ray

    from jobs.local_platform.services import PLATFORM_LABEL

    return any((node.get("Labels") or {}).get(PLATFORM_LABEL) for node in ray.nodes() if node.get("Alive"))


def wait_for_cluster(spec: JobSpec, extra_bundles: list[Bundle]) -> None:
    """Wait until the cluster can hold the workers (and `extra_bundles`); fail when it never can."""
    scaling = spec.scaling
    bundles = [*extra_bundles, *worker_bundles(scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu)]
    what = f"scaling: {scaling.num_workers} workers × {scaling.cpus_per_worker:g} CPU" + (
        " + 1 GPU" if scaling.use_gpu else "")
    try:
        wait_for_resources(bundles, timeout_s=scaling.resources_timeout_s, what=what, grows=not is_local_platform())
    except ClusterTooSmallError as error:
        raise SpecError(f"{error}; lower scaling.num_workers / scaling.cpus_per_worker or add nodes") from None


def code_version() -> str:
    """The git commit of a source checkout, else the installed package's version."""
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"isrn-platform=={version('isrn-platform')}"
        except PackageNotFoundError:
            return "unknown"


def storage_for(spec: JobSpec, env: JobEnvironment) -> tuple[str, Any]:
    """Ray's (storage_path, storage_filesystem): `bucket/prefix` with a keyless pyarrow S3 filesystem
    for s3:// (credentials come from each process's environment), an absolute path otherwise."""
    storage = spec.checkpoint.storage
    if is_s3_url(storage):
        bucket, prefix = split_s3_url(storage)
        return f"{bucket}/{prefix}".rstrip("/"), arrow_s3_filesystem(env.s3)
    return str(Path(storage).expanduser().absolute()), None


def new_run_name(spec: JobSpec) -> str:
    return f"{spec.name}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"
