"""The driver of a training job: checks, data, the MLflow run, `TorchTrainer.fit`, the logged model.

    outcome = run_training(load_spec("smoke"))        # what `isrn train smoke` does

Everything that can be wrong with a spec (types, unknown keys, a missing manifest, unreachable S3,
a cluster too small) fails here, before any Ray worker starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from data_shards.manifest import manifest_url, read_manifest
from data_shards.storage import StorageAccessError, check_access, is_s3_url, split_s3_url
from jobs.environment import JobEnvironment
from jobs.spec import REPO_ROOT, JobSpec, SpecError
from jobs.train import faults
from jobs.train.checkpoint_store import CheckpointStore
from jobs.train.tracking import finish_run, run_url, start_or_resume_run
from jobs.train.worker import WorkerJob, train_loop_per_worker

log = logging.getLogger(__name__)

SCORE_METRIC = "val_ap_hard"


@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    run_name: str
    mlflow_run_id: str
    mlflow_run_url: str
    metrics: dict[str, Any]
    best_checkpoint: str | None
    model_uri: str | None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_data(spec: JobSpec, env: JobEnvironment) -> None:
    """Generate the data set and build its shards when the spec asks for it and they are missing."""
    synth = spec.data.synth
    if synth is None:
        return
    missing = [split for split in ("train", "val") if not _manifest_exists(spec.data.shards, split, env)]
    if not missing:
        return
    from data_shards.shard_writer import build_split
    from data_shards.synth import generate_dataset

    root = synth.root if synth.root.is_absolute() else REPO_ROOT / synth.root
    if not (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").is_file():
        log.info("generating a WIDER-format data set in %s (%d train, %d val images)", root,
                 synth.train_images, synth.val_images)
        generate_dataset(root, train=synth.train_images, val=synth.val_images, seed=synth.seed,
                         config=synth.generator)
    for split in missing:
        log.info("building %s shards in %s", split, spec.data.shards)
        build_split(root, split, spec.data.shards, shard_size_mb=synth.shard_size_mb, settings=env.s3,
                    progress=False)


def _manifest_exists(shards: str, split: str, env: JobEnvironment) -> bool:
    try:
        read_manifest(manifest_url(shards, split), env.s3)
    except FileNotFoundError:
        return False
    return True


def preflight(spec: JobSpec, env: JobEnvironment) -> dict[str, str]:
    """Fail before any worker starts; return the train and val manifest fingerprints."""
    fingerprints = {}
    try:
        check_access(spec.data.shards, env.s3)
        if is_s3_url(spec.checkpoint.storage):
            check_access(spec.checkpoint.storage, env.s3, write=True)
    except StorageAccessError as error:
        raise SpecError(f"data.shards / checkpoint.storage: {error}") from None
    for split in ("train", "val"):
        url = manifest_url(spec.data.shards, split)
        try:
            manifest = read_manifest(url, env.s3)
        except FileNotFoundError:
            raise SpecError(
                f"data.shards: no {split} shard manifest at {url}; build it with "
                f"`isrn shards build --wider-root DIR --split {split} --out {spec.data.shards}` "
                f"or give the spec a data.synth section"
            ) from None
        if split == "val" and not manifest.ground_truth:
            raise SpecError(f"data.shards: the val split at {url} carries no ground-truth .mat files")
        fingerprints[split] = manifest.annotation_sha256[:16]
    return fingerprints


def check_cluster(spec: JobSpec) -> None:
    """Ray retries an infeasible worker group forever: refuse it here instead."""
    import ray

    resources = ray.cluster_resources()
    need_cpu = spec.scaling.num_workers * spec.scaling.cpus_per_worker
    need_gpu = spec.scaling.num_workers if spec.scaling.use_gpu else 0
    if resources.get("CPU", 0) < need_cpu or resources.get("GPU", 0) < need_gpu:
        raise SpecError(
            f"scaling: {spec.scaling.num_workers} workers need {need_cpu:g} CPUs and {need_gpu} GPUs, "
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
        )


def storage_for(spec: JobSpec, env: JobEnvironment) -> tuple[str, Any]:
    """Ray's (storage_path, storage_filesystem): `bucket/prefix` with a pyarrow S3 filesystem for s3://."""
    from data_shards.storage import arrow_s3_filesystem

    storage = spec.checkpoint.storage
    if is_s3_url(storage):
        bucket, prefix = split_s3_url(storage)
        return f"{bucket}/{prefix}".rstrip("/"), arrow_s3_filesystem(env.s3)
    path = Path(storage)
    return str(path if path.is_absolute() else REPO_ROOT / path), None


def new_run_name(spec: JobSpec) -> str:
    return f"{spec.name}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"


def build_trainer(spec: JobSpec, env: JobEnvironment, run_name: str, run_id: str | None,
                  callbacks: list | None = None):
    """The `TorchTrainer` of a spec (Tune reuses it unchanged, adding its report callback)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, filesystem = storage_for(spec, env)
    job = WorkerJob(
        train_manifest=manifest_url(spec.data.shards, "train"),
        val_manifest=manifest_url(spec.data.shards, "val"),
        tracking_uri=env.mlflow_uri, run_id=run_id,
        s3={"endpoint_url": env.s3.endpoint_url, "access_key": env.s3.access_key,
            "secret_key": env.s3.secret_key, "region": env.s3.region},
        faults=tuple(dataclasses.asdict(f) for f in faults.plan_from_env()),
    )
    scaling = spec.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.to_dict(), "job": dataclasses.asdict(job)},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo",
                                 timeout_s=scaling.collective_timeout_s),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep,
                                               checkpoint_score_attribute=SCORE_METRIC,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            callbacks=callbacks or None,
        ),
    )


def connect_ray(env: JobEnvironment) -> None:
    import ray

    if ray.is_initialized():
        return
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # A driver started by the Jobs API (`isrn submit`): the job's runtime environment already
        # carries the settings to every worker, and Ray refuses a second one with the same keys.
        ray.init(address=env.ray_address, logging_level=logging.WARNING)
        return
    # The workers get S3 and MLflow from the runtime environment, not from the head's shell.
    ray.init(address=env.ray_address, runtime_env={"env_vars": env.worker_env()}, logging_level=logging.WARNING)


def run_training(spec: JobSpec, *, resume: str | None = None, env: JobEnvironment | None = None) -> TrainingOutcome:
    """Run a spec on the Ray cluster; `resume` is the run name of a stopped run to continue."""
    env = env or JobEnvironment.resolve()
    ensure_data(spec, env)
    fingerprints = preflight(spec, env)
    connect_ray(env)
    check_cluster(spec)
    import ray
    from ray.train import Checkpoint

    run_name = resume or new_run_name(spec)
    tags = {
        "isrn.git_commit": git_commit(), "isrn.spec": spec.name, "isrn.spec_fingerprint": spec.fingerprint(),
        "isrn.train_manifest": fingerprints["train"], "isrn.val_manifest": fingerprints["val"],
        "isrn.world_size": str(spec.scaling.num_workers),
        "ray.job_id": ray.get_runtime_context().get_job_id(),
        "ray.submission_id": os.environ.get("RAY_JOB_SUBMISSION_ID", ""),
    }
    run_id = start_or_resume_run(env.mlflow_uri, spec.tracking.experiment, run_name, tags=tags,
                                 params=spec.flat_params(), spec_yaml=spec.to_yaml())
    log.info("training %s: MLflow run %s", run_name, run_url(env.mlflow_uri, run_id))
    try:
        result = build_trainer(spec, env, run_name, run_id).fit()
        best: Checkpoint | None = None
        if result.best_checkpoints:
            best = max(result.best_checkpoints, key=lambda pair: pair[1].get(SCORE_METRIC, 0.0))[0]
        model_uri = None
        if best is not None and spec.tracking.log_model:
            model_uri = log_best_model(env.mlflow_uri, run_id, best, spec)
        prune_unregistered_checkpoints(spec, env, run_name, result)
    except BaseException:
        finish_run(env.mlflow_uri, run_id, "FAILED")
        raise
    finish_run(env.mlflow_uri, run_id, "FINISHED")
    return TrainingOutcome(run_name=run_name, mlflow_run_id=run_id, mlflow_run_url=run_url(env.mlflow_uri, run_id),
                           metrics=dict(result.metrics or {}), best_checkpoint=best.path if best else None,
                           model_uri=model_uri)


def prune_unregistered_checkpoints(spec: JobSpec, env: JobEnvironment, run_name: str, result) -> None:
    """Delete the run's checkpoint folders that Ray did not keep (after a successful fit).

    Ray's `num_to_keep` manages only what it registered; a checkpoint a worker completed just
    before dying, which a restarted group resumed from (jobs/train/checkpoint_store.py), is known
    to the platform alone, and so is removed by it.
    """
    from pyarrow import fs

    storage_path, filesystem = storage_for(spec, env)
    kept = {checkpoint.path for checkpoint, _ in result.best_checkpoints or []}
    if result.checkpoint is not None:
        kept.add(result.checkpoint.path)
    store = CheckpointStore(filesystem or fs.LocalFileSystem(), f"{storage_path}/{run_name}")
    for path in store.prune_except(kept):
        log.info("pruned checkpoint %s (not kept by Ray)", path)


def log_best_model(tracking_uri: str, run_id: str, checkpoint, spec: JobSpec) -> str:
    """Log the best checkpoint's model to the run as an MLflow PyTorch model, ready to register."""
    from jobs.train.model_logging import log_detector

    with tempfile.TemporaryDirectory(prefix="isrn-best-") as directory:
        local = Path(checkpoint.to_directory(directory))
        return log_detector(tracking_uri, run_id, local, spec, checkpoint_uri=checkpoint.path)
