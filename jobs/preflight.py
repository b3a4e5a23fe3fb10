"""The checks a job makes before its first worker starts, and the connections it opens.

    check_storage(spec, env)                   # shards readable, checkpoint storage writable
    checked = check_job(spec, env)             # manifests, MLflow, Ray, the cluster's capacity

In order: S3 reachable with working credentials (before anything is generated or uploaded); both
manifests readable and the train split large enough for one optimiser step; the MLflow server
answering; Ray connected; checkpoints in shared storage when the cluster has several nodes; the
cluster able to hold the workers (waiting for the autoscaler when it can add them).

What the user wrote and cannot run fails with `ConfigError` naming the field and the fix; a service
that does not answer fails with `ServiceUnavailableError` naming its URL (jobs/errors.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
from typing import Any

from data_shards.manifest import Manifest, manifest_url, read_manifest
from data_shards.storage import StorageAccessError, check_access, is_s3_url
from jobs.cluster import Bundle, ClusterTooSmallError, wait_for_resources, worker_bundles
from jobs.environment import JobEnvironment
from jobs.errors import ConfigError, ServiceUnavailableError
from jobs.spec import JobSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class CheckedJob:
    """What the checks found: the manifests the workers read and their annotation fingerprints."""

    train_manifest: str
    val_manifest: str
    fingerprints: dict[str, str]
    """Split -> the manifest's annotation sha256, first 16 hex digits."""


def check_storage(spec: JobSpec, env: JobEnvironment) -> None:
    """Shards readable (writable when the job generates them), checkpoint storage writable."""
    try:
        check_access(spec.data.shards, env.s3, write=spec.data.synth is not None)
        if is_s3_url(spec.checkpoint.storage):
            check_access(spec.checkpoint.storage, env.s3, write=True)
    except StorageAccessError as error:
        if _is_connection_failure(error):
            raise ServiceUnavailableError(f"data.shards / checkpoint.storage: {error}") from None
        raise ConfigError(f"data.shards / checkpoint.storage: {error}") from None


def _is_connection_failure(error: BaseException) -> bool:
    from botocore.exceptions import EndpointConnectionError

    return isinstance(error.__cause__, (EndpointConnectionError, ConnectionError))


def check_job(spec: JobSpec, env: JobEnvironment, *, extra_bundles: list[Bundle] | None = None) -> CheckedJob:
    """Manifests, MLflow, Ray and the cluster's capacity (see the module docstring); `extra_bundles`
    are asked beside the workers (a Tune trial's driver). Connects this process to Ray."""
    fingerprints = read_fingerprints(spec, env)
    check_tracking_server(env.tracking_uri)
    connect_ray(env)
    import ray

    nodes = ray.nodes()
    check_checkpoint_storage(spec, nodes)
    wait_for_cluster(spec, extra_bundles or [], nodes)
    return CheckedJob(train_manifest=manifest_url(spec.data.shards, "train"),
                      val_manifest=manifest_url(spec.data.shards, "val"), fingerprints=fingerprints)


def read_split_manifest(spec: JobSpec, split: str, env: JobEnvironment) -> Manifest | None:
    """The split's manifest, None when there is none; ConfigError when it is not a valid one."""
    try:
        return read_manifest(manifest_url(spec.data.shards, split), env.s3)
    except FileNotFoundError:
        return None
    except ValueError as error:  # names the manifest and the fix
        raise ConfigError(f"data.shards: {error}") from None


def read_fingerprints(spec: JobSpec, env: JobEnvironment) -> dict[str, str]:
    """The train and val manifests' annotation fingerprints; both must exist, val with its ground truth,
    and the train split must fill one optimiser step."""
    fingerprints = {}
    for split in SPLITS:
        url = manifest_url(spec.data.shards, split)
        manifest = read_split_manifest(spec, split, env)
        if manifest is None:
            raise ConfigError(
                f"data.shards: no {split} shard manifest at {url}; build it with "
                f"`isrn shards build --wider-root DIR --split {split} --out {spec.data.shards}` "
                f"or give the spec a data.synth section"
            )
        if split == "val" and not manifest.ground_truth:
            raise ConfigError(f"data.shards: the val split at {url} carries no ground-truth .mat files")
        if manifest.boxes != spec.data.boxes:
            raise ConfigError(f"data.boxes: the spec trains on {spec.data.boxes} boxes, but the {split} shards at "
                              f"{url} hold {manifest.boxes} boxes: set data.boxes: {manifest.boxes}, or build the "
                              f"shards with --boxes {spec.data.boxes}")
        if split == "train":
            check_batch_fits(spec, manifest.samples, url)
        fingerprints[split] = data_fingerprint(manifest)
    return fingerprints


def data_fingerprint(manifest: Manifest) -> str:
    """What the run tags as its data (`isrn.train_manifest` / `isrn.val_manifest`; promotion compares
    models only on the same val data): the annotation file's sha256, and the box kind when it is not
    faces, since one COCO file gives face and person boxes (16 hex digits)."""
    if manifest.boxes == "face":
        return manifest.annotation_sha256[:16]
    return hashlib.sha256(f"{manifest.annotation_sha256}:{manifest.boxes}".encode()).hexdigest()[:16]


def check_batch_fits(spec: JobSpec, train_samples: int, url: str) -> None:
    """One optimiser step takes batch × workers × accumulation images: the train split must hold them."""
    batch, workers, accum = spec.loader.batch_size, spec.scaling.num_workers, spec.train.grad_accum_steps
    if batch * workers * accum > train_samples:
        raise ConfigError(
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
        raise ConfigError(
            f"checkpoint.storage: {storage!r} is a local path, but the cluster has {len(working)} nodes that run "
            "workers, each with its own disk: give checkpoint.storage an s3://BUCKET/prefix every node can reach")


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """The MLflow server answers its health check within `timeout_s` (its client would otherwise retry
    for minutes before failing). Every command that talks to MLflow calls this first."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as error:
        raise ServiceUnavailableError(
            f"the MLflow server at {uri} (MLFLOW_TRACKING_URI) does not answer: {error}; start the local "
            "platform (`isrn platform up`) or set MLFLOW_TRACKING_URI") from None


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
        raise ServiceUnavailableError(f"no Ray cluster at {env.ray_address} (RAY_ADDRESS): {error}; start the local "
                                      "platform (`isrn platform up`) or set RAY_ADDRESS") from None


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """A TCP connection to `address` when it is HOST:PORT or ray://HOST:PORT, so that a dead address fails
    at once rather than after `ray.init`'s minute of retries; other forms ("auto") are Ray's to read."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or "/" in host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ServiceUnavailableError(f"no Ray cluster answers at {address} (RAY_ADDRESS): {error}; start the local "
                                      "platform (`isrn platform up`) or set RAY_ADDRESS to the head's HOST:6379"
                                      ) from None


def wait_for_cluster(spec: JobSpec, extra_bundles: list[Bundle], nodes: list[dict[str, Any]]) -> None:
    """Wait until the cluster can hold the workers (and `extra_bundles`); fail when it never can.
    `nodes` as `ray.nodes()` returns them: a local platform's single head never grows."""
    from jobs.local_platform.services import is_local_platform

    scaling = spec.scaling
    bundles = [*extra_bundles, *worker_bundles(scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu)]
    what = f"scaling: {scaling.num_workers} workers × {scaling.cpus_per_worker:g} CPU" + (
        " + 1 GPU" if scaling.use_gpu else "")
    local = is_local_platform(node.get("Labels") for node in nodes if node.get("Alive"))
    try:
        wait_for_resources(bundles, timeout_s=scaling.resources_timeout_s, what=what, grows=not local)
    except ClusterTooSmallError as error:
        raise ConfigError(f"{error}; lower scaling.num_workers / scaling.cpus_per_worker or add nodes") from None
