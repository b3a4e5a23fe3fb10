"""What rank 0 logs through and what other ranks get: the trackers' shared contract."""

from __future__ import annotations

import logging

import pytest

from jobs.spec import load_spec
from jobs.train.tracking import NullTracker, make_tracker
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
