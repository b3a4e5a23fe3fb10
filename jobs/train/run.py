"""One run of a spec on Ray Train, from checks to logged model: what `isrn train` and every Tune trial do.

    job = prepare_job(spec, env)                                   # checks, data, lineage
    outcome = execute(job, run_name, run_id)                       # fit, prune, log the best model

`isrn train` (jobs/train/driver.py) wraps it in its MLflow run, writer lease and progress display; a
Tune trial (jobs/tune/study.py) wraps it in its child run with Tune's report callback, under its
study's lease. Both get the same guarantees: the storage-outage refit, pruning of what Ray did not
keep (only while the job holds its lease), and the one rule that picks a run's model
(`checkpoint_store.best_evaluated`), applied to the checkpoints in storage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_shards.storage import arrow_s3_filesystem, is_s3_url, split_s3_url
from jobs import metrics as M
from jobs import tags
from jobs.data_prep import prepare_data
from jobs.environment import JobEnvironment
from jobs.lineage import lineage_tags, pin_init_from
from jobs.preflight import check_job, check_storage, check_tracking_server
from jobs.spec import JobSpec
from jobs.train import faults
from jobs.train.checkpoint_store import CheckpointStore, StoredCheckpoint
from jobs.train.lease import WriterLease, check_held
from jobs.train.outages import outage_cause
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
    storage_outages: int = 0
    """How many times a checkpoint-storage outage stopped the run (its workers, each time restarted, or
    Ray Train's controller, each time fitted again) and the run went on: the run's tag
    `isrn.storage_outages`."""


@dataclasses.dataclass(frozen=True)
class LeaseRef:
    """The writer lease a job's writes are made under: its object's path on the checkpoint filesystem and
    the holder id (jobs/train/lease.py). Workers check it before they prune or upload."""

    path: str
    holder: str


def prepare_job(spec: JobSpec, env: JobEnvironment, *, extra_bundles: list[dict[str, float]] | None = None
                ) -> PreparedJob:
    """Everything before the first worker: MLflow (first: its client would retry for minutes), storage,
    the spec's generated data (only when it asks for it), manifests, Ray, the cluster's capacity, and
    the run's lineage. The prepared spec is the one that runs: `model.init_from` pinned to a model
    version (`lineage.pin_init_from`)."""
    check_tracking_server(env.tracking_uri)
    prepare_storage(spec, env)
    if spec.data.synth is not None:
        prepare_data(spec, env)
    checked = check_job(spec, env, extra_bundles=extra_bundles)
    spec, init_from = pin_init_from(spec, env.tracking_uri)
    return PreparedJob(spec=spec, env=env, train_manifest=checked.train_manifest, val_manifest=checked.val_manifest,
                       lineage={**lineage_tags(spec, checked.fingerprints), **init_from})


def prepare_storage(spec: JobSpec, env: JobEnvironment) -> None:
    """Shards and checkpoint storage answer with working credentials, which this process's pyarrow
    (Ray's checkpoint storage, the writer lease) and boto3 then read from its environment."""
    check_storage(spec, env)
    env.export_s3()


def storage_for(spec: JobSpec, env: JobEnvironment) -> tuple[str, Any]:
    """Ray's (storage_path, storage_filesystem): `bucket/prefix` with a keyless pyarrow S3 filesystem
    for s3:// (credentials come from each process's environment), an absolute path otherwise."""
    storage = spec.checkpoint.storage
    if is_s3_url(storage):
        bucket, prefix = split_s3_url(storage)
        return f"{bucket}/{prefix}".rstrip("/"), arrow_s3_filesystem(env.s3)
    return str(Path(storage).expanduser().absolute()), None


def checkpoint_filesystem(spec: JobSpec, env: JobEnvironment) -> tuple[str, Any]:
    """(storage path, pyarrow filesystem) of the spec's checkpoint storage; the local one for a path."""
    from pyarrow import fs

    storage_path, filesystem = storage_for(spec, env)
    return storage_path, filesystem or fs.LocalFileSystem()


def writer_lease(spec: JobSpec, env: JobEnvironment, run_name: str, *, job: str = "") -> WriterLease:
    """The writer lease of run (or study) `run_name`, in its storage folder."""
    storage_path, filesystem = checkpoint_filesystem(spec, env)
    return WriterLease(filesystem, f"{storage_path}/{run_name}", timeout_s=spec.checkpoint.lease_timeout_s, job=job)


def run_store(spec: JobSpec, env: JobEnvironment, run_name: str) -> CheckpointStore:
    """The checkpoint folders of run `run_name` (a training run, or a Tune trial's Train run)."""
    storage_path, filesystem = checkpoint_filesystem(spec, env)
    return CheckpointStore(filesystem, f"{storage_path}/{run_name}")


def build_trainer(job: PreparedJob, run_name: str, run_id: str | None, callbacks: list | None = None,
                  progress: Any = None, *, max_failures: int | None = None, lease: LeaseRef | None = None,
                  fault_plan: tuple[faults.Fault, ...] = ()):
    """The `TorchTrainer` of a prepared spec, allowed `max_failures` worker-group restarts (default:
    `scaling.max_failures`).

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
        run_id=run_id, faults=tuple(dataclasses.asdict(f) for f in fault_plan), progress=progress,
        verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
        lease=dataclasses.asdict(lease) if lease else None,
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
            failure_config=FailureConfig(
                max_failures=scaling.max_failures if max_failures is None else max_failures),
            callbacks=callbacks or None,
        ),
    )


def execute(job: PreparedJob, run_name: str, run_id: str, *, callbacks: list | None = None, progress: Any = None,
            log_model: bool = True, lease: LeaseRef | None = None) -> RunResult:
    """Fit the run (through storage outages), prune what Ray did not keep, and log the best evaluated
    checkpoint as the run's model when `log_model` (and the spec's `tracking.log_model`) say so.

    `lease`: the writer lease the job holds (None: no check, for callers that hold none); the
    workers and the pruning check it before they write, so a job that lost it stops writing."""
    spec, env = job.spec, job.env
    plan = faults.plan_from_env()
    if plan:
        # A test-only feature reached a job: say so where it shows, in the log and on the run.
        log.warning("FAULT INJECTION ACTIVE (%s is set): workers of run %s will be killed at %s", faults.PLAN_VARIABLE,
                    run_name, "; ".join(f.describe() for f in plan))
        from jobs.train.tracking import set_tag

        set_tag(env.tracking_uri, run_id, tags.FAULT_PLAN, faults.plan_text(plan))
    outcome = fit_through_storage_outages(
        lambda failures_left, counter: build_trainer(job, run_name, run_id, [*(callbacks or []), counter], progress,
                                                     max_failures=failures_left, lease=lease, fault_plan=plan),
        spec, env, run_name, on_outage=lambda count: _record_outages(env.tracking_uri, run_id, count))
    if outcome.storage_outages:
        _record_outages(env.tracking_uri, run_id, outcome.storage_outages)
    if lease is not None:
        _, filesystem = checkpoint_filesystem(spec, env)
        check_held(filesystem, lease.path, lease.holder)
    prune_unregistered_checkpoints(spec, env, run_name, outcome.result)
    best = run_store(spec, env, run_name).best_evaluated()
    model_uri = None
    if best is not None and log_model and spec.tracking.log_model:
        model_uri = log_best_model(job, run_name, run_id, best)
    return RunResult(metrics=dict(outcome.result.metrics or {}), best_checkpoint=best, model_uri=model_uri,
                     storage_outages=outcome.storage_outages)


def _record_outages(tracking_uri: str, run_id: str, count: int) -> None:
    from jobs.train.tracking import set_tag

    try:
        set_tag(tracking_uri, run_id, tags.STORAGE_OUTAGES, str(count))
    except Exception as error:  # noqa: BLE001 - the run goes on; the count is in the driver's log too
        log.warning("could not tag MLflow run %s with its storage outages (%s)", run_id, str(error)[:200])


@dataclasses.dataclass(frozen=True)
class FitOutcome:
    result: Any
    """Ray Train's `Result` of the last fit."""
    outages: int
    """Storage outages that stopped Ray Train's controller (each one a refit)."""
    worker_failures: int
    """Worker-group failures of all the fits (each one a restart)."""
    worker_storage_failures: int = 0
    """Those of `worker_failures` a storage outage caused (an upload or a restore that found it gone)."""

    @property
    def storage_outages(self) -> int:
        return self.outages + self.worker_storage_failures


def fit_through_storage_outages(make_trainer: Callable[[int, Any], Any], spec: JobSpec, env: JobEnvironment,
                                run_name: str, *, on_outage: Callable[[int], None] = lambda count: None,
                                new_counter: Callable[[], Any] | None = None) -> FitOutcome:
    """`make_trainer(failures_left, counter).fit()`, fitted again under the same run name when the checkpoint
    storage went away.

    Ray Train's controller writes its checkpoint bookkeeping to the run's storage folder and ends the
    whole run on the first write that fails (an `OSError` is not among its retryable controller
    errors): a few seconds of S3 unavailability would cost the run. When the error is an outage (a
    refused, reset or timed-out connection, a 5xx: jobs/train/outages.py), the driver waits for the
    storage to take a write again and fits again with the same name, which resumes from the newest
    complete checkpoint (jobs/train/session.py). A permission, not-found or disk-full error ends the
    run at once: waiting does not cure it.

    The budget: `scaling.max_failures` bounds the failures of a run, worker-group restarts and storage
    outages together. Each outage costs one; Ray Train restarts worker groups within a fit, and each
    refit is allowed only what is left (`counter`, a Ray Train callback made by `new_counter`, counts
    the restarts of a fit, and which a storage outage caused: an outage that hits a worker's upload or
    restore first is a worker-group restart, not a refit). `on_outage(n)` is called after each refit
    with the number of interruptions storage outages caused so far (refits and such restarts).
    """
    from ray.train import ControllerError

    if new_counter is None:
        from jobs.train.failure_count import WorkerFailureCounter as new_counter
    budget = spec.scaling.max_failures
    used = outages = restarts = storage_restarts = 0

    def count(failures: list[str]) -> None:
        nonlocal used, restarts, storage_restarts
        restarts += len(failures)
        used += len(failures)
        storage_restarts += sum(1 for cause in failures if cause)
        for cause in filter(None, failures):
            log.warning("run %s: a worker group failed on a storage outage (%s); Ray Train restarted it from the "
                        "newest complete checkpoint", run_name, cause)

    while True:
        counter = new_counter()
        try:
            result = make_trainer(budget - used, counter).fit()
        except ControllerError as error:
            cause = outage_cause(error.controller_failure)
            count(counter.drain())
            if cause is None:
                raise
            if used + 1 > budget:
                raise OSError(f"checkpoint storage {spec.checkpoint.storage} failed under Ray Train's controller "
                              f"({cause}: {error.controller_failure}) with the run's failure budget spent "
                              f"(scaling.max_failures = {budget}: {outages} storage outages and {restarts} "
                              f"worker-group restarts so far); its complete checkpoints are kept: continue with "
                              f"`isrn train {spec.name} --resume {run_name}`") from error
            used += 1
            outages += 1
            log.warning("storage outage %d of run %s (%s: %s): Ray Train's controller stopped; waiting up to %.0f s "
                        "for the storage to take a write, then resuming from the newest complete checkpoint "
                        "(failure budget: %d of scaling.max_failures = %d used)", outages, run_name, cause,
                        str(error.controller_failure)[:300], spec.scaling.storage_outage_timeout_s, used, budget)
            if not storage_answers(spec, env, spec.scaling.storage_outage_timeout_s, run_name):
                raise OSError(f"checkpoint storage {spec.checkpoint.storage} did not answer for "
                              f"{spec.scaling.storage_outage_timeout_s:.0f} s; the run's complete checkpoints are "
                              f"kept: once it answers, continue with `isrn train {spec.name} --resume {run_name}`"
                              ) from error
            on_outage(outages + storage_restarts)
            continue
        except BaseException:
            counter.drain()
            raise
        count(counter.drain())
        return FitOutcome(result, outages, restarts, storage_restarts)


def storage_answers(spec: JobSpec, env: JobEnvironment, timeout_s: float, run_name: str = "") -> bool:
    """Whether the checkpoint storage takes a write (a probe object in the run's folder, then deleted)
    within `timeout_s`. An error that is not an outage (permission, disk full) is raised at once:
    storage that lists but refuses writes would otherwise pass, and the run refit in a loop."""
    storage_path, filesystem = checkpoint_filesystem(spec, env)
    folder = f"{storage_path}/{run_name}" if run_name else storage_path
    probe = f"{folder}/.isrn-probe-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            filesystem.create_dir(folder)
            with filesystem.open_output_stream(probe) as out:
                out.write(b"probe")
            filesystem.delete_file(probe)
            return True
        except OSError as error:
            cause = outage_cause(error)
            if cause is None:
                raise
            if time.monotonic() >= deadline:
                return False
            log.info("checkpoint storage still unavailable (%s); probing again in 2 s", cause)
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
