"""MLflow from the training job: the driver owns the run, rank 0 logs into it with explicit steps.

Ray's MLflow callbacks are not used: Train V2 rejects Tune callbacks, and `setup_mlflow` in
workers plus a driver run gives two unlinked runs (shared/PLATFORM.md). The run is created on the
driver, its id travels in the worker config, and after a worker-group restart rank 0 reattaches to
the same run, so the history stays one run with continuous steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from jobs.tags import RAY_RUN_NAME

log = logging.getLogger(__name__)


class NullTracker:
    """What ranks other than 0 get: every call is a no-op, so rank logic is decided once."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass


class MlflowTracker(NullTracker):
    """Logs into an existing MLflow run by id (never starts or ends it)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


def make_tracker(is_main: bool, tracking_uri: str, run_id: str | None) -> NullTracker:
    return MlflowTracker(tracking_uri, run_id) if is_main and run_id else NullTracker()


def start_or_resume_run(
    tracking_uri: str, experiment: str, run_name: str, *, tags: dict[str, str], params: dict[str, str],
    spec_yaml: str,
) -> str:
    """The MLflow run of a Ray run name: the existing one (resume) or a new one; returns its id."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_obj = client.get_experiment_by_name(experiment)
    experiment_id = experiment_obj.experiment_id if experiment_obj else client.create_experiment(experiment)
    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RAY_RUN_NAME}` = '{run_name}'", max_results=1
    )
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        log.info("resuming MLflow run %s (%s)", run_id, run_name)
        return run_id
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, RAY_RUN_NAME: run_name})
    run_id = run.info.run_id
    items = list(params.items())
    for start in range(0, len(items), 90):  # log_batch takes at most 100 params
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 90]])
    client.log_text(run_id, spec_yaml, "spec/resolved_spec.yaml")
    log.info("MLflow run %s: %s/#/experiments/%s/runs/%s", run_name, tracking_uri, experiment_id, run_id)
    return run_id


def finish_run(tracking_uri: str, run_id: str, status: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def run_url(tracking_uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri).get_run(run_id)
    return f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def describe(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
