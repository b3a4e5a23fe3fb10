"""The driver of a training job: checks, data, the MLflow run, `TorchTrainer.fit`, the logged model.

    outcome = run_training(load_spec("smoke"))        # what `isrn train smoke` does

Everything that can be wrong with a spec (types, unknown keys, a missing manifest, unreachable S3
or MLflow, a cluster that cannot hold the workers) fails in `prepare_job`, before any Ray worker
starts.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from jobs.environment import JobEnvironment
from jobs.preparation import PreparedJob, new_run_name, prepare_job, storage_for
from jobs.spec import JobSpec
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


def build_trainer(job: PreparedJob, run_name: str, run_id: str | None, callbacks: list | None = None):
    """The `TorchTrainer` of a prepared spec (Tune reuses it unchanged, adding its report callback).

    Nothing secret goes into it: Ray pickles the trainer, and Tune stores it in the checkpoint
    bucket. Workers read S3 credentials from their own environment (the local head's, a
    Kubernetes Secret's, an IAM role's).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = job.spec
    storage_path, filesystem = storage_for(spec, job.env)
    worker_job = WorkerJob(
        train_manifest=job.train_manifest, val_manifest=job.val_manifest, tracking_uri=job.env.mlflow_uri,
        run_id=run_id, faults=tuple(dataclasses.asdict(f) for f in faults.plan_from_env()),
    )
    scaling = spec.scaling
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.to_dict(), "job": dataclasses.asdict(worker_job)},
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


def run_training(spec: JobSpec, *, resume: str | None = None, env: JobEnvironment | None = None) -> TrainingOutcome:
    """Run a spec on the Ray cluster; `resume` is the run name of a stopped run to continue."""
    from ray.train import Checkpoint

    env = env or JobEnvironment.resolve()
    job = prepare_job(spec, env)
    run_name = resume or new_run_name(spec)
    run_id = start_or_resume_run(env.mlflow_uri, spec.tracking.experiment, run_name, tags=job.lineage,
                                 params=spec.flat_params(), spec_yaml=spec.to_yaml())
    log.info("training %s: MLflow run %s", run_name, run_url(env.mlflow_uri, run_id))
    try:
        result = build_trainer(job, run_name, run_id).fit()
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


def prune_unregistered_checkpoints(spec: JobSpec, env: JobEnvironment, run_name: str, result: Any) -> None:
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
