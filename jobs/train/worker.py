"""The per-worker training function: what Ray Train runs on every worker.

`train_loop_per_worker` is Ray Train's entry point; `run_worker` is the same loop with the
session and the tracker passed in, so it also runs in one process without Ray (tests, benches,
`bench/gpu_check.py` on a GPU):

    run_worker(spec, job, LocalSession(Path("/tmp/ckpt")))                      # one CPU process
    run_worker(spec, job, LocalSession(root, device="cuda"), tracker=recorder)  # one GPU, no MLflow

The loop itself is `jobs.train.trainer.Trainer`.
"""

from __future__ import annotations

import logging
from typing import Any

from jobs.spec import JobSpec
from jobs.train.checkpoints import TrainingState
from jobs.train.progress import ProgressSink
from jobs.train.session import LocalSession, RaySession, Session
from jobs.train.tracking import Tracker, make_tracker
from jobs.train.trainer import Trainer, WorkerJob

__all__ = ["LocalSession", "RaySession", "WorkerJob", "run_worker", "train_loop_per_worker"]

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` = {"spec": resolved spec dict, "job": WorkerJob fields}."""
    job = WorkerJob(**config["job"])
    level = logging.INFO if job.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A Ray worker's root logger has its handlers already (basicConfig does nothing then): the
    # levels are set on the loggers themselves. Our per-step and per-epoch lines, and Ray Train's
    # "Reporting training result …" and "Checkpoint successfully created …" for every report, are
    # what the driver's progress display says once per epoch; `isrn -v` shows them.
    logging.getLogger("jobs").setLevel(level)
    if not job.verbose:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger("ray.train").setLevel(logging.WARNING)
        # Train V2 names this logger by its file path, outside the "ray.train" tree.
        train_context.logger.setLevel(logging.WARNING)
    run_worker(JobSpec.from_dict(config["spec"]), job, RaySession(job.faults, job.lease))


def run_worker(spec: JobSpec, job: WorkerJob, session: Session, tracker: Tracker | None = None) -> TrainingState:
    """Train on this worker until `spec.train.epochs`; returns where training stands.

    `tracker` defaults to MLflow on rank 0 (when `job.run_id` is set) and nothing on other ranks.
    """
    is_main = session.rank == 0
    tracker = tracker or make_tracker(is_main, job.tracking_uri, job.run_id)
    progress = ProgressSink(job.progress if is_main else None)
    try:
        state = Trainer.build(spec, job, session, tracker, progress).fit()
    except BaseException:
        try:  # what was logged before the failure should still reach the run; the failure is what matters
            tracker.close(timeout_s=30)
        except Exception as error:  # noqa: BLE001
            log.warning("could not flush the MLflow logs: %s", error)
        raise
    tracker.close()
    return state
