"""A Ray Tune study of a spec: each trial is the training job of `jobs/train`, unchanged.

    outcome = run_study(load_spec("tune-smoke"))                  # what `isrn tune tune-smoke` does
    outcome = run_study(load_spec("tune-smoke"), resume="tune-smoke-20250101-120000")

The trainable is a function that runs the trial's spec exactly as `isrn train` runs a spec
(`jobs.train.run.execute`: the storage-outage refit, pruning, the checkpoint rule) with Tune's
`TuneReportCallback` in the Train `RunConfig` (how Ray Train V2 runs under Tune). Tune reserves
only the trial's own driver CPU, so the study bounds concurrency by what a trial's Train workers
need too. Trial Train runs are named `<study>-<trial id>`: a trial restarted by a resumed study
continues from its latest checkpoint in S3 and reattaches to its MLflow child run. The best trial's
model is logged once the study ends, from that trial's checkpoints, by the rule training uses.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

from jobs import tags
from jobs.cluster import Bundle, autoscaler_node_types, cluster_nodes, max_capacity, trials_that_fit
from jobs.environment import JobEnvironment
from jobs.errors import ConfigError
from jobs.lineage import pin_init_from, submission_id
from jobs.preflight import check_tracking_server
from jobs.spec import JobSpec
from jobs.train.resume import describe_differences, keep_pinned_init_from, new_run_name, spec_differences
from jobs.train.run import (
    LeaseRef, PreparedJob, execute, log_best_model, prepare_job, prepare_storage, run_store, storage_for,
    writer_lease,
)
from jobs.train.tracking import find_run, finish_run, run_spec, run_url, set_tag, start_or_resume_run
from jobs.tune.config import TuneConfig
from jobs.tune.mlflow_study import TrialRunStatus, closed_trials, log_study_summary, trial_run_name
from jobs.tune.search_space import apply_trial_config, check_space, param_space, searched_values

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StudyContext:
    """What every trial needs from the study's driver (plain values, nothing secret: Tune pickles it
    into its experiment state in the checkpoint bucket; trials take S3 credentials from their own
    environment)."""

    spec: dict[str, Any]
    tracking_uri: str
    study: str
    parent_run_id: str
    train_manifest: str
    val_manifest: str
    lineage: dict[str, str]
    lease: dict[str, str] | None = None
    """The study's writer lease (`LeaseRef` fields): trials check it before they write."""


@dataclasses.dataclass(frozen=True)
class StudyOutcome:
    study: str
    parent_run_id: str
    parent_run_url: str
    trials: list[dict[str, Any]]
    interrupted: bool
    best_run_id: str | None
    model_uri: str | None
    wall_s: float
    failed_trials: list[str] = dataclasses.field(default_factory=list)


def trial_job(context: StudyContext, config: dict[str, Any]) -> PreparedJob:
    """The prepared job of one trial: the study's checks and lineage, the trial's spec."""
    env = dataclasses.replace(JobEnvironment.resolve(), tracking_uri=context.tracking_uri)
    trial_spec = apply_trial_config(JobSpec.from_dict(context.spec), config)
    return PreparedJob(spec=trial_spec, env=env, train_manifest=context.train_manifest,
                       val_manifest=context.val_manifest, lineage=context.lineage)


def run_trial(config: dict[str, Any], *, context: StudyContext) -> None:
    """Tune's function trainable: the trial's spec, run as `isrn train` runs a spec, in its child run.

    Its model is not logged here: the study logs the best trial's once every trial has ended."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    job = trial_job(context, config)
    trial_id = tune.get_context().get_trial_id()
    run_name = trial_run_name(context.study, trial_id)
    run_tags = {**context.lineage, tags.SPEC_FINGERPRINT: job.spec.fingerprint(),
                "mlflow.parentRunId": context.parent_run_id, tags.STUDY: context.study, tags.TRIAL_ID: trial_id}
    run_id = start_or_resume_run(context.tracking_uri, job.spec.tracking.experiment, run_name, tags=run_tags,
                                 params={**job.spec.flat_params(),
                                         **searched_values(JobSpec.from_dict(context.spec), config)},
                                 spec_yaml=job.spec.to_yaml())
    execute(job, run_name, run_id, callbacks=[TuneReportCallback()], log_model=False,
            lease=LeaseRef(**context.lease) if context.lease else None)


def trial_bundles(spec: JobSpec) -> list[Bundle]:
    """What one trial holds: its driver (the `TorchTrainer.fit` caller) and its Train workers."""
    from jobs.cluster import worker_bundles

    assert spec.tune is not None
    scaling = spec.scaling
    return [{"CPU": spec.tune.trial_cpus},
            *worker_bundles(scaling.num_workers, scaling.cpus_per_worker, scaling.use_gpu)]


def max_concurrent_trials(spec: JobSpec, capacity: list[Bundle]) -> int:
    """Trials that fit at once on `capacity` (the resources of each node the cluster has or may launch)."""
    tune_spec, scaling = spec.tune, spec.scaling
    assert tune_spec is not None
    fits = trials_that_fit(trial_bundles(spec), capacity, limit=tune_spec.num_samples)
    if fits < 1:
        per_trial_cpu = tune_spec.trial_cpus + scaling.num_workers * scaling.cpus_per_worker
        raise ConfigError(
            f"scaling / tune.trial_cpus: a trial needs {per_trial_cpu:g} CPUs (trial driver {tune_spec.trial_cpus:g} "
            f"+ {scaling.num_workers} workers × {scaling.cpus_per_worker:g}), the Ray cluster has "
            f"{sum(n.get('CPU', 0) for n in capacity):g} on {len(capacity)} node(s) at most: lower "
            f"scaling.cpus_per_worker or tune.trial_cpus"
        )
    return min(fits, tune_spec.max_concurrent_trials or fits)


def build_scheduler(tune_spec: TuneConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = tune_spec.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    if s.grace_period > s.max_t:
        raise ConfigError(f"tune.scheduler: grace_period ({s.grace_period}) exceeds max_t ({s.max_t})")
    return ASHAScheduler(time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def build_search(tune_spec: TuneConfig, concurrency: int):
    if tune_spec.search == "optuna":
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError("tune.search: optuna is not installed (pip install 'isrn-platform[tune]'), "
                            "or use search: random") from None
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=tune_spec.seed))  # limited by TuneConfig
    from ray.tune.search import BasicVariantGenerator

    # Tune ignores TuneConfig.max_concurrent_trials for a BasicVariantGenerator it did not make.
    return BasicVariantGenerator(random_state=tune_spec.seed, max_concurrent=concurrency)


def run_study(spec: JobSpec, *, resume: str | None = None, name: str | None = None,
              env: JobEnvironment | None = None) -> StudyOutcome:
    """Run (or resume) the study of `spec.tune`; the spec must be the one the study started with."""
    from ray import tune

    started = time.perf_counter()
    check_space(spec)
    tune_spec = spec.tune
    assert tune_spec is not None
    env = env or JobEnvironment.resolve()
    check_tracking_server(env.tracking_uri)
    prepare_storage(spec, env)
    study = resume or name or new_run_name(spec)
    storage_path, filesystem = storage_for(spec, env)
    study_path = f"{storage_path}/{study}"
    experiment = spec.tracking.experiment
    parent = find_run(env.tracking_uri, experiment, study) if resume or name else None
    restorable = parent is not None and tune.Tuner.can_restore(study_path, storage_filesystem=filesystem)
    if name and not resume and restorable:
        # A study named again (a retried RayJob, a resubmitted `isrn submit --run-name`) continues.
        log.warning("study %s exists: resuming it", study)
        resume = study
    if resume and not restorable:
        raise ConfigError(f"no study {study!r} to resume: no MLflow run in experiment {experiment!r} "
                          f"or no Tune state at {study_path}")
    recorded = run_spec(env.tracking_uri, parent.info.run_id) if parent is not None else None
    if recorded is not None:
        spec = keep_pinned_init_from(spec, recorded)
    spec, _ = pin_init_from(spec, env.tracking_uri)  # as it runs: model.init_from pinned to a version
    if parent is not None:
        if parent.data.tags.get(tags.SPEC_FINGERPRINT) != spec.fingerprint():
            fields = (f" (study's value -> this spec's):\n{describe_differences(spec_differences(recorded, spec.to_dict()))}"
                      if recorded is not None else f": it ran spec {parent.data.tags.get(tags.SPEC_FINGERPRINT)}, this "
                                                  f"spec is {spec.fingerprint()}")
            raise ConfigError(f"study {study!r} was started with another spec{fields}\nresume with the same spec "
                              f"and --set values")

    # The lease before the rest of the preparation: a study another job runs is refused at once.
    lease = writer_lease(spec, env, study, job=submission_id())
    lease.acquire()
    try:
        job = prepare_job(spec, env, extra_bundles=[{"CPU": tune_spec.trial_cpus}])
        spec = job.spec
        # Capacity as the autoscaler could grow it: the first trial is already known to fit.
        capacity = max_capacity(cluster_nodes(), autoscaler_node_types(), unbounded_as=tune_spec.num_samples
                                * len(trial_bundles(spec)))
        concurrency = max_concurrent_trials(spec, capacity)
        return _run_locked(spec, env, job, study, study_path, filesystem, storage_path, concurrency, resume,
                           lease, started)
    finally:
        lease.release()


def _run_locked(spec: JobSpec, env: JobEnvironment, job: PreparedJob, study: str, study_path: str, filesystem: Any,
                storage_path: str, concurrency: int, resume: str | None, lease: Any, started: float
                ) -> StudyOutcome:
    """The study, once its writer lease is held."""
    import _thread

    from ray import tune

    tune_spec = spec.tune
    assert tune_spec is not None
    experiment = spec.tracking.experiment
    parent_run_id = start_or_resume_run(
        env.tracking_uri, experiment, study, params=spec.flat_params(), spec_yaml=spec.to_yaml(),
        tags={**job.lineage, tags.STUDY: study, tags.TUNE_ROLE: "study",
              tags.TUNE_SEARCH: tune_spec.search, tags.TUNE_SCHEDULER: tune_spec.scheduler.name},
    )
    log.info("study %s (%d trials, %d at a time): MLflow run %s", study, tune_spec.num_samples, concurrency,
             run_url(env.tracking_uri, parent_run_id))

    context = StudyContext(spec=spec.to_dict(), tracking_uri=env.tracking_uri, study=study, parent_run_id=parent_run_id,
                           train_manifest=job.train_manifest, val_manifest=job.val_manifest, lineage=job.lineage,
                           lease=dataclasses.asdict(LeaseRef(lease.path, lease.holder)))
    trainable = tune.with_resources(functools.partial(run_trial, context=context), {"CPU": tune_spec.trial_cpus})
    if resume:
        tuner = tune.Tuner.restore(study_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        max_t = tune_spec.scheduler.max_t if tune_spec.scheduler.name == "asha" else None
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(tune_spec),
            tune_config=tune.TuneConfig(metric=tune_spec.metric, mode=tune_spec.mode,
                                        scheduler=build_scheduler(tune_spec), search_alg=build_search(tune_spec, concurrency),
                                        num_samples=tune_spec.num_samples, max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(
                name=study, storage_path=storage_path, storage_filesystem=filesystem,
                callbacks=[TrialRunStatus(env.tracking_uri, experiment, study, default_epochs=spec.train.epochs,
                                          max_t=max_t)],
                failure_config=tune.FailureConfig(max_failures=0),  # Train restarts workers itself
            ),
        )
    try:
        with lease.kept_alive(on_lost=_thread.interrupt_main):
            results = tuner.fit()
    except BaseException:
        if lease.lost is not None:
            raise lease.lost from None  # the study is another job's now: leave its MLflow run alone
        finish_run(env.tracking_uri, parent_run_id, "FAILED")
        raise

    interrupted = closed_trials(env.tracking_uri, experiment, parent_run_id) < len(results)
    if interrupted:
        finish_run(env.tracking_uri, parent_run_id, "KILLED")
        log.warning("study %s interrupted: resume it with `isrn tune %s --resume %s`", study, spec.name, study)
        return StudyOutcome(study, parent_run_id, run_url(env.tracking_uri, parent_run_id), [], True, None, None,
                            time.perf_counter() - started)

    dimensions = list(tune_spec.space)
    log_scale = {d for d, domain in tune_spec.space.items() if "log" in next(iter(domain))}
    rows = log_study_summary(env.tracking_uri, experiment, parent_run_id, dimensions, tune_spec.metric, log_scale)
    best_run_id, model_uri = None, None
    if results.num_terminated:
        best_run_id, model_uri = _log_best_trial_model(results, spec, context)
    # A crashed trial fails the study (exit code, parent run status) once the others have finished;
    # what they produced (summary, best model) is kept.
    failed = [row["trial_id"] for row in rows if row["status"] == "FAILED"]
    if failed:
        set_tag(env.tracking_uri, parent_run_id, tags.FAILED_TRIALS, ",".join(failed))
        log.error("study %s: %d of %d trials failed (%s); their errors are in the Ray logs and their MLflow runs",
                  study, len(failed), len(rows), ", ".join(failed))
    finish_run(env.tracking_uri, parent_run_id, "FINISHED" if results.num_terminated and not failed else "FAILED")
    return StudyOutcome(study, parent_run_id, run_url(env.tracking_uri, parent_run_id), rows, False, best_run_id,
                        model_uri, time.perf_counter() - started, failed)


def _log_best_trial_model(results, spec: JobSpec, context: StudyContext) -> tuple[str | None, str | None]:
    """(run id, model URI) of the best trial: its best evaluated checkpoint, picked from its storage by
    the rule a training run uses, logged into its child run (what `isrn promote` registers)."""
    tune_spec = spec.tune
    assert tune_spec is not None
    best = results.get_best_result(metric=tune_spec.metric, mode=tune_spec.mode, scope="all")
    run_name = trial_run_name(context.study, best.metrics["trial_id"])
    run = find_run(context.tracking_uri, spec.tracking.experiment, run_name)
    if run is None:
        return None, None
    if not spec.tracking.log_model:
        return run.info.run_id, None
    job = trial_job(context, best.config)
    checkpoint = run_store(job.spec, job.env, run_name).best_evaluated()
    if checkpoint is None:
        log.warning("best trial %s has no evaluated checkpoint: no model logged", best.metrics["trial_id"])
        return run.info.run_id, None
    return run.info.run_id, log_best_model(job, run_name, run.info.run_id, checkpoint)
