"""MLflow from the training job: the driver owns the run, rank 0 logs into it with explicit steps.

Ray's MLflow callbacks are not used: Train V2 rejects Tune callbacks, and `setup_mlflow` in
workers plus a driver run gives two unlinked runs. The run is created on the driver, its id travels
in the worker config, and after a worker-group restart rank 0 reattaches to the same run, so the
history stays one run with continuous steps.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from jobs.metrics import EVENT_METRICS
from jobs.tags import RAY_RUN_NAME

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """Where the training loop logs: MLflow on rank 0 (`MlflowTracker`), nothing elsewhere (`NullTracker`)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def flush(self, timeout_s: float) -> bool: ...
    def close(self, timeout_s: float = 600.0) -> None: ...


class NullTracker:
    """What ranks other than 0 get: every call is a no-op, so rank logic is decided once."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self, timeout_s: float = 600.0) -> None:
        pass


class MlflowTracker(NullTracker):
    """Logs into an existing MLflow run by id (never starts or ends it), without ever blocking a step.

    Calls queue their payload; a background thread sends it in order and, when the server does not
    answer (restarting, a network cut), keeps it and tries again until it does: metrics reach the run
    when MLflow returns, training goes on meanwhile. `close()` waits for the queue to drain.

    Replays are logged once: a worker group restarted from a checkpoint repeats the steps between that
    checkpoint and the failure, which the run already holds. A metric whose step is at most the run's
    latest step of that metric (read once per metric, at its first call) is not sent again, so the
    history stays one value per step, the first one. Resumed runs are bitwise
    deterministic on CPU (the loop skips the batches it had consumed), so the values are the same.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, retry_s: float = 5.0) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id, self.retry_s = run_id, retry_s
        self._logged: dict[str, float] = {}
        self._queue: queue.Queue = queue.Queue()
        self._files = Path(tempfile.mkdtemp(prefix="isrn-tracker-"))
        self._thread = threading.Thread(target=self._send_forever, name="isrn-mlflow", daemon=True)
        self._thread.start()

    # ---- the training thread's side: never waits on the network
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._queue.put(("metrics", (dict(metrics), int(step), int(time.time() * 1000))))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        # The caller's file may be gone before the thread sends it (a temporary folder): keep a copy.
        copy = self._files / uuid.uuid4().hex / Path(path).name
        copy.parent.mkdir()
        shutil.copyfile(path, copy)
        self._queue.put(("artifact", (copy, artifact_path)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._queue.put(("text", (text, artifact_file)))

    def flush(self, timeout_s: float) -> bool:
        """Wait, at most `timeout_s`, until everything queued before this call reached MLflow; whether it did."""
        sent = threading.Event()
        self._queue.put(("flush", sent))
        return sent.wait(timeout_s)

    def close(self, timeout_s: float = 600.0) -> None:
        """Wait until everything queued reached MLflow; raise if the server stays away for `timeout_s`."""
        self._queue.put(("stop", None))
        self._thread.join(timeout_s)
        shutil.rmtree(self._files, ignore_errors=True)
        if self._thread.is_alive():
            raise TimeoutError(f"MLflow run {self.run_id}: {self._queue.qsize()} logging calls still unsent after "
                               f"{timeout_s:.0f} s; is the tracking server at {self.client.tracking_uri} up?")

    # ---- the sender thread
    def _send_forever(self) -> None:
        while True:
            kind, payload = self._queue.get()
            if kind == "stop":
                return
            if kind == "flush":  # everything queued before it is sent
                payload.set()
                continue
            while True:
                try:
                    self._send(kind, payload)
                    break
                except Exception as error:  # noqa: BLE001 - MLflow down or restarting: keep it, try again
                    log.warning("MLflow unavailable (%s); keeping the %s and retrying in %.0f s",
                                str(error)[:200], kind, self.retry_s)
                    time.sleep(self.retry_s)

    def _send(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Metric

        if kind == "metrics":
            metrics, step, timestamp = payload
            fresh = {k: v for k, v in metrics.items() if k in EVENT_METRICS or step > self._latest_step(k)}
            if fresh:
                self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), timestamp, step)
                                                            for k, v in fresh.items()])
                for key in fresh:
                    self._logged[key] = max(self._logged.get(key, -1), step)
        elif kind == "artifact":
            path, artifact_path = payload
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        elif kind == "text":
            self.client.log_text(self.run_id, *payload)

    def _latest_step(self, key: str) -> float:
        if key not in self._logged:
            history = self.client.get_metric_history(self.run_id, key)
            self._logged[key] = max((m.step for m in history), default=-1)
        return self._logged[key]


def make_tracker(is_main: bool, tracking_uri: str, run_id: str | None) -> Tracker:
    return MlflowTracker(tracking_uri, run_id) if is_main and run_id else NullTracker()


def find_run(tracking_uri: str, experiment: str, run_name: str):
    """The MLflow run of a Ray run name (tag `isrn.ray_run_name`) in `experiment`, or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.`{RAY_RUN_NAME}` = '{run_name}'", max_results=1)
    return runs[0] if runs else None


def start_or_resume_run(
    tracking_uri: str, experiment: str, run_name: str, *, tags: dict[str, str], params: dict[str, str],
    spec_yaml: str,
) -> str:
    """The MLflow run of a Ray run name: the existing one (resume) or a new one; returns its id."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    existing = find_run(tracking_uri, experiment, run_name)
    if existing is not None:
        run_id = existing.info.run_id
        client.update_run(run_id, status="RUNNING")
        log.info("resuming MLflow run %s (%s)", run_id, run_name)
        return run_id
    experiment_obj = client.get_experiment_by_name(experiment)
    experiment_id = experiment_obj.experiment_id if experiment_obj else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, RAY_RUN_NAME: run_name})
    run_id = run.info.run_id
    items = list(params.items())
    for start in range(0, len(items), 90):  # log_batch takes at most 100 params
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 90]])
    client.log_text(run_id, spec_yaml, SPEC_ARTIFACT)
    log.info("MLflow run %s: %s/#/experiments/%s/runs/%s", run_name, tracking_uri, experiment_id, run_id)
    return run_id


SPEC_ARTIFACT = "spec/resolved_spec.yaml"
"""The run's spec: the one it started with, or the latest a resume accepted a change to."""


def recent_runs(tracking_uri: str, experiment: str, limit: int = 10) -> list[str]:
    """The newest training runs of `experiment`, one line each (run name, status, start): what an error
    about a run name that does not exist lists."""
    import datetime as dt

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], f"tags.`{RAY_RUN_NAME}` LIKE '%'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    return [f"{run.data.tags[RAY_RUN_NAME]}  {run.info.status}  started "
            f"{dt.datetime.fromtimestamp(run.info.start_time / 1000, dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
            for run in runs]


def run_spec(tracking_uri: str, run_id: str) -> dict[str, Any] | None:
    """The resolved spec a run records (`SPEC_ARTIFACT`), None when it has none."""
    import yaml
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory(prefix="isrn-spec-") as directory:
        try:
            local = MlflowClient(tracking_uri).download_artifacts(run_id, SPEC_ARTIFACT, directory)
        except Exception as error:  # noqa: BLE001 - MLflow raises several types for a missing artifact
            log.warning("run %s has no readable %s (%s)", run_id, SPEC_ARTIFACT, str(error)[:200])
            return None
        return yaml.safe_load(Path(local).read_text())


def record_spec_change(tracking_uri: str, run_id: str, spec_yaml: str, fingerprint: str, change: str) -> None:
    """A resume accepted `change` (one line per field): the run's spec becomes `spec_yaml`, the one the
    next resume compares with; the previous one is kept under `spec/before_<time>.yaml`. Params stay
    the values the run started with (MLflow params never change); the changes are in tag
    `isrn.spec_changes`."""
    import datetime as dt

    from mlflow.tracking import MlflowClient

    from jobs.tags import SPEC_CHANGES, SPEC_FINGERPRINT

    client = MlflowClient(tracking_uri)
    now = dt.datetime.now(dt.timezone.utc)
    before = run_spec(tracking_uri, run_id)
    if before is not None:
        import yaml

        client.log_text(run_id, yaml.safe_dump(before, sort_keys=False), f"spec/before_{now:%Y%m%d-%H%M%S}.yaml")
    client.log_text(run_id, spec_yaml, SPEC_ARTIFACT)
    earlier = client.get_run(run_id).data.tags.get(SPEC_CHANGES, "")
    entry = f"{now:%Y-%m-%d %H:%M} UTC: {change}"
    client.set_tag(run_id, SPEC_CHANGES, (f"{earlier}\n{entry}" if earlier else entry)[-5000:])
    client.set_tag(run_id, SPEC_FINGERPRINT, fingerprint)


def set_tag(tracking_uri: str, run_id: str, key: str, value: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_tag(run_id, key, value)


def finish_run(tracking_uri: str, run_id: str, status: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).set_terminated(run_id, status=status)


def run_url(tracking_uri: str, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri).get_run(run_id)
    return f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def describe(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
