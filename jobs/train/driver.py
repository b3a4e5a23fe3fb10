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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs import tags
from jobs.environment import JobEnvironment
from jobs.preparation import PreparedJob, new_run_name, prepare_job, storage_for
from jobs.spec import JobSpec
from jobs.train import faults
from jobs.train.checkpoint_store import CheckpointStore
from jobs.train.progress import ProgressDisplay
from jobs.train.tracking import finish_run, run_url, start_or_resume_run
from jobs.train.worker import CHECKPOINT_SCORE, UNEVALUATED, WorkerJob, is_evaluated, train_loop_per_worker

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    run_name: str
    mlflow_run_id: str
    mlflow_run_url: str
    metrics: dict[str, Any]
    best_checkpoint: str | None
    model_uri: str | None


def build_trainer(job: PreparedJob, run_name: str, run_id: str | None, callbacks: list | None = None,
                  progress: Any = None):
    """The `TorchTrainer` of a prepared spec (Tune reuses it unchanged, adding its report callback).

    Nothing secret goes into it: Ray pickles the trainer, and Tune stores it in the checkpoint
    bucket. Workers read S3 credentials from their own environment (the local head's, a
    Kubernetes Secret's, an IAM role's). `progress`: a Ray queue rank 0 sends progress events to.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = job.spec
    storage_path, filesystem = storage_for(spec, job.env)
    worker_job = WorkerJob(
        train_manifest=job.train_manifest, val_manifest=job.val_manifest, tracking_uri=job.env.mlflow_uri,
        run_id=run_id, faults=tuple(dataclasses.asdict(f) for f in faults.plan_from_env()), progress=progress,
        verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
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
            # Only evaluated checkpoints compete for the best `keep`; Ray keeps the latest as well.
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.keep,
                                               checkpoint_score_attribute=CHECKPOINT_SCORE,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            callbacks=callbacks or None,
        ),
    )


def best_evaluated(checkpoints: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]] | None:
    """The (checkpoint, its report's metrics) of the highest AP Hard among evaluated checkpoints; on
    a tie the later one (None when no checkpoint was evaluated)."""
    scored = [(c, m) for c, m in checkpoints if is_evaluated(float(m.get(CHECKPOINT_SCORE, UNEVALUATED)))]
    return max(scored, key=lambda pair: (pair[1][CHECKPOINT_SCORE], pair[1].get("step", 0)), default=None)


def run_training(spec: JobSpec, *, resume: str | None = None, env: JobEnvironment | None = None) -> TrainingOutcome:
    """Run a spec on the Ray cluster; `resume` is the run name of a stopped run to continue."""
    from ray.util.queue import Queue

    env = env or JobEnvironment.resolve()
    job = prepare_job(spec, env)
    run_name = resume or new_run_name(spec)
    run_id = start_or_resume_run(env.mlflow_uri, spec.tracking.experiment, run_name, tags=job.lineage,
                                 params=spec.flat_params(), spec_yaml=spec.to_yaml())
    log.warning("training %s: MLflow run %s", run_name, run_url(env.mlflow_uri, run_id))
    try:
        queue = Queue(actor_options={"num_cpus": 0})
        with ProgressDisplay(queue):
            result = fit_through_storage_outages(lambda: build_trainer(job, run_name, run_id, progress=queue),
                                                 spec, env, run_name)
        best = best_evaluated(result.best_checkpoints or [])
        model_uri = None
        if best is not None and spec.tracking.log_model:
            model_uri = log_best_model(env.mlflow_uri, run_id, best[0], spec, best[1], job.lineage[tags.VAL_MANIFEST])
        prune_unregistered_checkpoints(spec, env, run_name, result)
    except BaseException:
        finish_run(env.mlflow_uri, run_id, "FAILED")
        raise
    finish_run(env.mlflow_uri, run_id, "FINISHED")
    return TrainingOutcome(run_name=run_name, mlflow_run_id=run_id, mlflow_run_url=run_url(env.mlflow_uri, run_id),
                           metrics=dict(result.metrics or {}), best_checkpoint=best[0].path if best else None,
                           model_uri=model_uri)


def fit_through_storage_outages(make_trainer: Callable[[], Any], spec: JobSpec, env: JobEnvironment,
                                run_name: str) -> Any:
    """`make_trainer().fit()`, fitted again under the same run name when the checkpoint storage went away.

    Ray Train's controller writes its checkpoint bookkeeping to the run's storage folder and ends the
    whole run on the first write that fails (an `OSError` is not among its retryable controller
    errors): a few seconds of S3 unavailability would cost the run. The driver waits for the storage
    to answer again and fits again with the same name, which resumes from the newest complete
    checkpoint (jobs/train/session.py). Each outage counts against `scaling.max_failures`.
    """
    from ray.train import ControllerError

    outages = 0
    while True:
        try:
            return make_trainer().fit()
        except ControllerError as error:
            if not isinstance(error.controller_failure, OSError) or outages >= spec.scaling.max_failures:
                raise
            outages += 1
            log.warning("the checkpoint storage failed under Ray Train's controller (%s); waiting up to %.0f s for it "
                        "(outage %d of at most %d), then resuming from the newest complete checkpoint",
                        error.controller_failure, spec.scaling.storage_outage_timeout_s, outages,
                        spec.scaling.max_failures)
            if not storage_answers(spec, env, spec.scaling.storage_outage_timeout_s):
                raise OSError(f"checkpoint storage {spec.checkpoint.storage} did not answer for "
                              f"{spec.scaling.storage_outage_timeout_s:.0f} s; the run's complete checkpoints are "
                              f"kept: once it answers, continue with `isrn train {spec.name} --resume {run_name}`"
                              ) from error


def storage_answers(spec: JobSpec, env: JobEnvironment, timeout_s: float) -> bool:
    """Whether the checkpoint storage answers (lists the checkpoint folder) within `timeout_s`."""
    from pyarrow import fs

    storage_path, filesystem = storage_for(spec, env)
    filesystem = filesystem or fs.LocalFileSystem()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            filesystem.get_file_info(storage_path)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(2)


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
        # Rare after a successful run (Ray deletes what it evicts itself): say so, with what Ray kept.
        log.warning("pruned checkpoint folder %s: not kept by Ray (kept: %s)", path, sorted(kept))


def log_best_model(tracking_uri: str, run_id: str, checkpoint, spec: JobSpec, report: dict[str, Any],
                   val_manifest: str) -> str:
    """Log the best evaluated checkpoint's model to the run, ready to register, with that checkpoint's
    AP (from its report), epoch and step as the model's own numbers and the run's `best_*`."""
    from jobs.train.model_logging import log_detector, log_model_metrics

    with tempfile.TemporaryDirectory(prefix="isrn-best-") as directory:
        local = Path(checkpoint.to_directory(directory))
        model_uri = log_detector(tracking_uri, run_id, local, spec, checkpoint_uri=checkpoint.path)
    ap = {key.removeprefix("val_ap_"): float(report[key]) for key in ("val_ap_easy", "val_ap_medium", "val_ap_hard")}
    log_model_metrics(tracking_uri, run_id, model_uri, ap, epoch=int(report["epoch"]), step=int(report["step"]),
                      val_manifest=val_manifest)
    return model_uri
