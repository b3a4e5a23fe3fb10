"""What rank 0 logs through and what other ranks get: the trackers' shared contract."""

from __future__ import annotations

import logging
import time

import pytest

from jobs.spec import load_spec
from jobs.train.tracking import MlflowTracker, NullTracker, make_tracker
from jobs.train.trainer import WorkerJob
from jobs.train.worker import run_worker


class _FailingSession:
    """A rank-1 session whose device cannot be had: the worker fails while it builds the trainer."""

    rank, world_size = 1, 2

    def device(self):
        raise RuntimeError("no device for this worker")


def test_a_failing_worker_closes_its_tracker_with_the_timeout_and_reports_its_own_error(caplog):
    """`run_worker` closes the tracker with `timeout_s` on failure: ranks other than 0 get a
    NullTracker, which must take it, or its TypeError replaces the flush with a warning."""
    assert isinstance(make_tracker(False, "http://mlflow:5000", "run"), NullTracker)
    NullTracker().close(timeout_s=30)
    job = WorkerJob(train_manifest="", val_manifest="", tracking_uri="http://mlflow:5000", run_id="run")
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="no device for this worker"):
        run_worker(load_spec("smoke"), job, _FailingSession())
    assert "could not flush the MLflow logs" not in caplog.text


class _SlowClient:
    """An MLflow client stand-in: each batch takes 0.2 s to send; `down` makes it refuse."""

    tracking_uri = "http://stand-in"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = False

    def log_batch(self, run_id, metrics) -> None:
        if self.down:
            raise ConnectionError("refused")
        time.sleep(0.2)
        self.sent.extend(m.key for m in metrics)

    def get_metric_history(self, run_id, key) -> list:
        return []


def test_flush_returns_once_what_was_logged_before_it_is_sent():
    # A checkpoint is reported only after this: a rank 0 lost after the report must not take the
    # metrics logged before it (the resumed run starts after them) along with its queue.
    tracker = MlflowTracker("http://127.0.0.1:9", "run")
    tracker.client = client = _SlowClient()
    tracker.log_metrics({"epoch": 1.0}, step=3)
    tracker.log_metrics({"val_ap_hard": 0.5}, step=3)
    assert tracker.flush(timeout_s=10) and client.sent == ["epoch", "val_ap_hard"]
    tracker.close(timeout_s=10)


def test_flush_gives_up_after_its_timeout_while_mlflow_is_away():
    tracker = MlflowTracker("http://127.0.0.1:9", "run", retry_s=0.1)
    tracker.client = client = _SlowClient()
    client.down = True
    tracker.log_metrics({"epoch": 1.0}, step=3)
    started = time.monotonic()
    assert not tracker.flush(timeout_s=0.5) and time.monotonic() - started < 2
    client.down = False  # the server returns: what waited is sent, once
    assert tracker.flush(timeout_s=10) and client.sent == ["epoch"]
    tracker.close(timeout_s=10)
