"""One run of a spec on Ray Train, from checks to logged model: what `isrn train` and every Tune trial do.

    job = prepare_job(spec, env)                                   # checks, data, lineage
    outcome = execute(job, run_name, run_id)                       # fit, prune, log the best model

`isrn train` (jobs/train/driver.py) wraps it in its MLflow run and progress display; a Tune trial
(jobs/tune/study.py) wraps it in its child run with Tune's report callback. Both get the same
guarantees: the storage-outage refit, pruning of what Ray did not keep, and the one rule that picks
a run's model (`checkpoint_store.best_evaluated`), applied to the checkpoints in storage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_shards.storage import arrow_s3_filesystem, is_s3_url, split_s3_url
from jobs import metrics as M
from jobs import tags
from jobs.data_prep import prepare_data
from jobs.environment import JobEnvironment
from jobs.lineage import lineage_tags, pin_init_from
from jobs.preflight import check_job, check_storage
from jobs.spec import JobSpec
from jobs.train import faults
from jobs.train.checkpoint_store import CheckpointStore, StoredCheckpoint
from jobs.train.trainer import WorkerJob
from jobs.train.worker import train_loop_per_worker

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreparedJob:
    """A spec checked against its services, with what its MLflow runs record."""

    spec: JobSpec
    env: JobEnvironment
    train_manifest: str
    val_manifest: str
    lineage: dict[str, str]
    """Run tags: commit, spec, manifest fingerprints, world size, Ray job (jobs/lineage.py)."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    metrics: dict[str, Any]
    """The last report's metrics."""
    best_checkpoint: StoredCheckpoint | None
    """The checkpoint the run's model comes from (None: no evaluated checkpoint)."""
    model_uri: str | None
    """The logged model (`models:/m-…`), when the run logged one."""


def prepare_job(spec: JobSpec, env: JobEnvironment, *, extra_bundles: list[dict[str, float]] | None = None
                ) -> PreparedJob:
    """Everything before the first worker: storage, the spec's generated data (only when it asks for
    it), manifests, MLflow, Ray, the cluster's capacity, and the run's lineage. The prepared spec is
    the one that runs: `model.init_from` pinned to a model version (`lineage.pin_init_from`)."""
    check_storage(spec, env)
    env.export_s3()  # pyarrow (Ray's checkpoint storage) and boto3 in this process read credentials from it
    if spec.data.synth is not None:
        prepare_data(spec, env)
    checked = check_job(spec, env, extra_bundles=extra_bundles)
    spec, init_from = pin_init_from(spec, env.tracking_uri)
    return PreparedJob(spec=spec, env=env, train_manifest=checked.train_manifest, val_manifest=checked.val_manifest,
                       lineage={**lineage_tags(spec, checked.fingerprints), **init_from})


def storage_for(spec: JobSpec, env: JobEnvironment) -> tuple[str, Any]:
    """Ray's (storage_path, storage_filesystem): `bucket/prefix` with a keyless pyarrow S3 filesystem
    for s3:// (credentials come from each process's environment), an absolute path otherwise."""
    storage = spec.checkpoint.storage
    if is_s3_url(storage):
        bucket, prefix = split_s3_url(storage)
        return f"{bucket}/{prefix}".rstrip("/"), arrow_s3_filesystem(env.s3)
    return str(Path(storage).expanduser().absolute()), None


def run_store(spec: JobSpec, env: JobEnvironment, run_name: str) -> CheckpointStore:
    """The checkpoint folders of run `run_name` (a training run, or a Tune trial's Train run)."""
    from pyarrow import fs

    storage_path, filesystem = storage_for(spec, env)
    return CheckpointStore(filesystem or fs.LocalFileSystem(), f"{storage_path}/{run_name}")


def build_trainer(job: PreparedJob, run_name: str, run_id: str | None, callbacks: list | None = None,
                  progress: Any = None):
    """The `TorchTrainer` of a prepared spec.

    Nothing secret goes into it: Ray pickles the trainer, and Tune stores it in the checkpoint
    bucket. Workers read S3 credentials from their own environment (the local head's, a
    Kubernetes Secret's, an IAM role's). `progress`: a Ray queue rank 0 sends progress events to.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = job.spec
    storage_path, filesystem = storage_for(spec, job.env)
    worker_job = WorkerJob(
        train_manifest=job.train_manifest, val_manifest=job.val_manifest, tracking_uri=job.env.tracking_uri,
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
                                               checkpoint_score_attribute=M.CHECKPOINT_SCORE,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            callbacks=callbacks or None,
        ),
    )


def execute(job: PreparedJob, run_name: str, run_id: str, *, callbacks: list | None = None, progress: Any = None,
            log_model: bool = True) -> RunResult:
    """Fit the run (through storage outages), prune what Ray did not keep, and log the best evaluated
    checkpoint as the run's model when `log_model` (and the spec's `tracking.log_model`) say so."""
    spec, env = job.spec, job.env
    result = fit_through_storage_outages(lambda: build_trainer(job, run_name, run_id, callbacks, progress),
                                         spec, env, run_name)
    prune_unregistered_checkpoints(spec, env, run_name, result)
    best = run_store(spec, env, run_name).best_evaluated()
    model_uri = None
    if best is not None and log_model and spec.tracking.log_model:
        model_uri = log_best_model(job, run_name, run_id, best)
    return RunResult(metrics=dict(result.metrics or {}), best_checkpoint=best, model_uri=model_uri)


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
    kept = {checkpoint.path for checkpoint, _ in result.best_checkpoints or []}
    if result.checkpoint is not None:
        kept.add(result.checkpoint.path)
    for path in run_store(spec, env, run_name).prune_except(kept):
        # Rare after a successful run (Ray deletes what it evicts itself): say so, with what Ray kept.
        log.warning("pruned checkpoint folder %s: not kept by Ray (kept: %s)", path, sorted(kept))


def log_best_model(job: PreparedJob, run_name: str, run_id: str, best: StoredCheckpoint) -> str:
    """Log checkpoint `best` of run `run_name` as the MLflow run's model, ready to register, with that
    checkpoint's AP (from its report), epoch and step as the model's own numbers and the run's `best_*`."""
    from jobs.train.model_logging import log_detector, log_model_metrics

    spec, env = job.spec, job.env
    store = run_store(spec, env, run_name)
    with tempfile.TemporaryDirectory(prefix="isrn-best-") as directory:
        local = store.download(best.path, Path(directory))
        model_uri = log_detector(env.tracking_uri, run_id, local, spec, checkpoint_uri=store.url_of(best.path))
        breakdown = breakdown_of_checkpoint(local)
    ap = {setting: float(best.metrics[name]) for setting, name in M.VAL_AP.items()}
    log_model_metrics(env.tracking_uri, run_id, model_uri, ap, epoch=best.epoch, step=best.step,
                      val_manifest=job.lineage[tags.VAL_MANIFEST], breakdown=breakdown)
    return model_uri


def breakdown_of_checkpoint(directory: Path) -> dict[str, float]:
    """The `val_ap_hard_<subset>` metrics an evaluated checkpoint carries ({} for older checkpoints)."""
    from isrn_model.wider_eval import WiderBreakdown
    from jobs.train.checkpoints import BREAKDOWN_FILE

    path = Path(directory) / BREAKDOWN_FILE
    if not path.is_file():
        return {}
    return M.breakdown_metrics(WiderBreakdown.from_json(json.loads(path.read_text())))
