"""`isrn train SPEC`: one training run on the Ray cluster, tracked as one MLflow run, written by one job.

    outcome = run_training(load_spec("smoke"))                          # what `isrn train smoke` does
    outcome = run_training(spec, resume="smoke-20261129-101500-3fa9c1")  # continue a stopped run
    outcome = run_training(spec, run_name="nightly-42")                  # new, or resumed if it exists

Everything that can be wrong with a spec (types, unknown keys, a missing manifest, unreachable S3
or MLflow, a cluster that cannot hold the workers) fails in `prepare_job`, before any Ray worker
starts; a resume of a run that does not exist, or with a spec it may not change, fails before that
(`plan_run`). The job then takes the run's writer lease (jobs/train/lease.py): a run another live job
writes is refused, a dead driver's run is taken over. The run itself is `jobs.train.run.execute`,
which Tune trials run too.

A run name pinned by whoever starts the job (`--run-name`, an `isrn submit --run-name`, a RayJob's
entrypoint) makes a retried job continue its run: the retry finds the run, waits out the dead
driver's lease, and resumes from the newest complete checkpoint in the same MLflow run.
"""

from __future__ import annotations

import _thread
import dataclasses
import logging
from typing import Any

from jobs.environment import JobEnvironment
from jobs.errors import ConfigError
from jobs.preflight import check_tracking_server
from jobs.spec import JobSpec
from jobs.train.lease import LeaseLostError
from jobs.train.progress import ProgressDisplay
from jobs.train.resume import (
    check_run_name, describe_differences, keep_pinned_init_from, new_run_name, resume_changes,
)
from jobs.train.run import LeaseRef, execute, prepare_job, prepare_storage, writer_lease
from jobs.train.tracking import (
    find_run, finish_run, recent_runs, record_spec_change, run_spec, run_url, start_or_resume_run,
)

__all__ = ["RunPlan", "TrainingOutcome", "new_run_name", "plan_run", "run_training"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    run_name: str
    mlflow_run_id: str
    mlflow_run_url: str
    metrics: dict[str, Any]
    best_checkpoint: str | None
    model_uri: str | None
    storage_outages: int = 0


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Which run a job writes: a new one, or an existing one it resumes."""

    run_name: str
    existing_run_id: str | None
    """The MLflow run of the run name (None: a new run)."""
    spec: JobSpec
    """The spec the job runs: the one given, with a resumed run's pinned `model.init_from` kept."""
    changes: list[tuple[str, Any, Any]] = dataclasses.field(default_factory=list)
    """Spec fields the resume changes (accepted with `allow_change`)."""


def plan_run(spec: JobSpec, tracking_uri: str, *, resume: str | None = None, run_name: str | None = None,
             allow_change: bool = False) -> RunPlan:
    """The run a job of `spec` writes. `resume`: a run that must exist; `run_name`: a run that is
    resumed if it exists, else started under that name; neither: a new run with a fresh name."""
    if resume and run_name and resume != run_name:
        raise ConfigError(f"--resume {resume} and --run-name {run_name} name two runs: give one")
    name = check_run_name(resume, "--resume") if resume else check_run_name(run_name) if run_name else None
    if name is None:
        return RunPlan(new_run_name(spec), None, spec)
    experiment = spec.tracking.experiment
    existing = find_run(tracking_uri, experiment, name)
    if existing is None:
        if resume:
            recent = recent_runs(tracking_uri, experiment)
            listing = ("; its most recent runs:\n  " + "\n  ".join(recent)) if recent else " (it has no runs)"
            raise ConfigError(f"--resume {name}: no run of that name in MLflow experiment {experiment!r} "
                              f"(tracking.experiment of spec {spec.name!r}){listing}")
        return RunPlan(name, None, spec)
    tags = existing.data.tags
    if tags.get("isrn.study") or tags.get("isrn.tune.role"):
        raise ConfigError(f"run {name!r} belongs to Tune study {tags.get('isrn.study')!r}: continue the study with "
                          f"`isrn tune SPEC --resume {tags.get('isrn.study')}`")
    started = run_spec(tracking_uri, existing.info.run_id)
    if started is None:
        if tags.get("isrn.spec_fingerprint") != spec.fingerprint():
            raise ConfigError(f"run {name!r} records no spec to compare with, and its spec fingerprint "
                              f"{tags.get('isrn.spec_fingerprint')} is not this spec's {spec.fingerprint()}: "
                              "resume it with the spec it was started with")
        changes: list = []
    else:
        spec = keep_pinned_init_from(spec, started)
        changes = resume_changes(started, spec, run=name, allow_change=allow_change)
    if existing.info.status == "FINISHED" and not changes:
        raise ConfigError(f"run {name!r} finished all its {spec.train.epochs} epochs: nothing to resume. Train it "
                          f"longer with `--set train.epochs=N --allow-change`, or start a new run")
    return RunPlan(name, existing.info.run_id, spec, changes)


def run_training(spec: JobSpec, *, resume: str | None = None, run_name: str | None = None,
                 allow_change: bool = False, env: JobEnvironment | None = None) -> TrainingOutcome:
    """Run a spec on the Ray cluster: a new run, or the run `resume` / `run_name` names (see `plan_run`)."""
    from jobs.lineage import submission_id
    from jobs.train.driver_queue import driver_queue

    env = env or JobEnvironment.resolve()
    check_tracking_server(env.tracking_uri)  # before anything else: fail in seconds, naming the URL
    plan = plan_run(spec, env.tracking_uri, resume=resume, run_name=run_name, allow_change=allow_change)
    # The lease before the rest of the preparation: a run another job writes is refused at once, not
    # after data generation or a wait for the cluster (which that job may be using).
    prepare_storage(spec, env)
    lease = writer_lease(spec, env, plan.run_name, job=submission_id())
    lease.acquire()
    run_id = None
    try:
        job = prepare_job(plan.spec, env)
        spec = job.spec  # as it runs: model.init_from pinned to a version
        run_id = start_or_resume_run(env.tracking_uri, spec.tracking.experiment, plan.run_name, tags=job.lineage,
                                     params=spec.flat_params(), spec_yaml=spec.to_yaml())
        if plan.changes:
            change = "; ".join(f"{f}: {old} -> {new}" for f, old, new in plan.changes)
            log.warning("resuming %s with spec changes:\n%s", plan.run_name, describe_differences(plan.changes))
            record_spec_change(env.tracking_uri, run_id, spec.to_yaml(), spec.fingerprint(), change)
        log.warning("training %s: MLflow run %s", plan.run_name, run_url(env.tracking_uri, run_id))
        # A lost lease (another job took the run over) interrupts the fit: this job stops writing.
        with lease.kept_alive(on_lost=_thread.interrupt_main):
            queue = driver_queue()
            with ProgressDisplay(queue):
                result = execute(job, plan.run_name, run_id, progress=queue,
                                 lease=LeaseRef(lease.path, lease.holder))
        finish_run(env.tracking_uri, run_id, "FINISHED")  # under the lease: a resume waits for it
    except BaseException as error:
        if lease.lost is not None or isinstance(error, LeaseLostError):
            raise (lease.lost or error) from None  # the run is another job's now: leave its MLflow run alone
        if run_id is not None:
            finish_run(env.tracking_uri, run_id, "FAILED")
        raise
    finally:
        lease.release()
    best = result.best_checkpoint
    return TrainingOutcome(run_name=plan.run_name, mlflow_run_id=run_id,
                           mlflow_run_url=run_url(env.tracking_uri, run_id), metrics=result.metrics,
                           best_checkpoint=best.path if best else None, model_uri=result.model_uri,
                           storage_outages=result.storage_outages)
