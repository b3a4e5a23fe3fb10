"""`isrn train SPEC`: one training run on the Ray cluster, tracked as one MLflow run.

    outcome = run_training(load_spec("smoke"))        # what `isrn train smoke` does

Everything that can be wrong with a spec (types, unknown keys, a missing manifest, unreachable S3
or MLflow, a cluster that cannot hold the workers) fails in `prepare_job`, before any Ray worker
starts. The run itself is `jobs.train.run.execute`, which Tune trials run too.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import Any

from jobs.environment import JobEnvironment
from jobs.spec import JobSpec
from jobs.train.progress import ProgressDisplay
from jobs.train.run import execute, prepare_job
from jobs.train.tracking import finish_run, run_url, start_or_resume_run

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    run_name: str
    mlflow_run_id: str
    mlflow_run_url: str
    metrics: dict[str, Any]
    best_checkpoint: str | None
    model_uri: str | None


def new_run_name(spec: JobSpec) -> str:
    return f"{spec.name}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"


def run_training(spec: JobSpec, *, resume: str | None = None, env: JobEnvironment | None = None) -> TrainingOutcome:
    """Run a spec on the Ray cluster; `resume` is the run name of a stopped run to continue."""
    from ray.util.queue import Queue

    env = env or JobEnvironment.resolve()
    job = prepare_job(spec, env)
    spec = job.spec  # as it runs: model.init_from pinned to a version
    run_name = resume or new_run_name(spec)
    run_id = start_or_resume_run(env.tracking_uri, spec.tracking.experiment, run_name, tags=job.lineage,
                                 params=spec.flat_params(), spec_yaml=spec.to_yaml())
    log.warning("training %s: MLflow run %s", run_name, run_url(env.tracking_uri, run_id))
    try:
        queue = Queue(actor_options={"num_cpus": 0})
        with ProgressDisplay(queue):
            result = execute(job, run_name, run_id, progress=queue)
    except BaseException:
        finish_run(env.tracking_uri, run_id, "FAILED")
        raise
    finish_run(env.tracking_uri, run_id, "FINISHED")
    best = result.best_checkpoint
    return TrainingOutcome(run_name=run_name, mlflow_run_id=run_id, mlflow_run_url=run_url(env.tracking_uri, run_id),
                           metrics=result.metrics, best_checkpoint=best.path if best else None,
                           model_uri=result.model_uri)
