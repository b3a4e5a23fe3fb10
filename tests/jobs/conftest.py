"""Promotion fixtures: the session's MLflow server, and training-like runs logged the way training logs them.

`training_run` follows the platform's contract: the best evaluated checkpoint is the run's
LoggedModel (`mlflow.pytorch.log_model(name="model")`, its URI in tag `jobs.tags.MODEL_URI`) and carries
its own `val_ap_*` (`log_model_metrics`); the run's own last `val_ap_hard` is deliberately another
number, the last evaluation's, which promotion must not use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from jobs import tags as T
from jobs.local_platform import Platform

SHELL_CANARY = "ISRN_TEST_SHELL_CANARY"
"""Exported here, at collection, so every local platform this session starts is started from a shell
that has it: no job may see it (tests/jobs/local_platform/test_local_platform.py), as a token or a
fault plan exported before `isrn platform up` must not reach one."""
os.environ.setdefault(SHELL_CANARY, "exported-before-platform-up")


@pytest.fixture
def ray_shutdown():
    """Disconnect this process from Ray after a test that trained in-process."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def local_mlflow(_session_platform: Platform) -> Platform:
    """The session's S3 and MLflow server; promotion needs no Ray head."""
    _session_platform.up(only=("s3", "mlflow"))
    return _session_platform


@pytest.fixture
def mlflow_env(local_mlflow: Platform, monkeypatch: pytest.MonkeyPatch):
    """(tracking URI, MlflowClient) of the session's MLflow, with the client variables set."""
    import mlflow
    from mlflow.tracking import MlflowClient

    for name, value in local_mlflow.config.client_env().items():
        monkeypatch.setenv(name, value)
    uri = local_mlflow.config.tracking_uri
    mlflow.set_tracking_uri(uri)
    return uri, MlflowClient(uri)


def _new_experiment(client, prefix: str = "promote") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.create_experiment(name)
    return name


def _log_training_run(client, experiment: str, ap_hard: float | None, *, val_manifest: str = "val-1111",
                     status: str = "FINISHED", model: bool = True, model_metrics: bool = True,
                     last_ap_hard: float = 0.05) -> str:
    """A finished training-like run: lineage tags, a last evaluation, and a tiny LoggedModel with its own AP.

    The model's AP is (ap_hard + 0.1, ap_hard + 0.05, ap_hard) Easy/Medium/Hard, at epoch 3, step 30;
    the run's last `val_ap_hard` is `last_ap_hard` (epoch 4, another checkpoint's weights).
    """
    import mlflow
    import torch

    from jobs.train.model_logging import log_model_metrics

    exp = client.get_experiment_by_name(experiment)
    run_id = client.create_run(exp.experiment_id, tags={
        T.SPEC: "smoke", T.SPEC_FINGERPRINT: "f" * 16, T.TRAIN_MANIFEST: "train-0000", T.VAL_MANIFEST: val_manifest,
        T.GIT_COMMIT: "abc123"}).info.run_id
    client.log_metric(run_id, "val_ap_hard", last_ap_hard, step=40)
    if model:
        mlflow.set_tracking_uri(client.tracking_uri)
        mlflow.set_experiment(experiment_id=exp.experiment_id)  # start_run refuses another active experiment
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", serialization_format="pickle",
                                            pip_requirements=["torch"])  # no requirement inference: fast
            mlflow.set_tag(T.MODEL_URI, info.model_uri)
        if model_metrics and ap_hard is not None:
            log_model_metrics(client.tracking_uri, run_id, info.model_uri,
                              {"easy": ap_hard + 0.1, "medium": ap_hard + 0.05, "hard": ap_hard},
                              epoch=3, step=30, val_manifest=val_manifest)
    client.set_terminated(run_id, status=status)
    return run_id


@pytest.fixture
def new_experiment():
    """`new_experiment(client) -> name`: a fresh experiment."""
    return _new_experiment


@pytest.fixture
def training_run():
    """`training_run(client, experiment, ap_hard, ...) -> run id`: see `_log_training_run`."""
    return _log_training_run


# ---------------------------------------------------------------- a Tune study, once per session
ISRN = [sys.executable, "-m", "jobs.cli"]
EXPERIMENT = "isrn-tune-test"
# Trials alternate (Tune's grid order) between a threshold that lets detections through and one that
# leaves none (AP exactly 0), so ASHA's rung after epoch 1 has a trial to stop whatever the random lr.
SPACE = ('tune.space={"optim.lr": {"loguniform": [0.001, 0.05]}, '
         '"inference.score_threshold": {"grid_search": [0.001, 0.99]}}')
SETS = ["--set", f"tracking.experiment={EXPERIMENT}", "--set", SPACE, "--set", "tune.num_samples=2"]


@pytest.fixture(scope="session")
def tune_study(local_platform, tmp_path_factory):
    """A real study on the local platform, started with `isrn tune`, interrupted with Ctrl+C once its
    first trial has finished, and resumed with `isrn tune --resume` (~3 min on 2 cores)."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, **local_platform.config.client_env(), "ISRN_STATE_DIR": str(local_platform.state)}
    client = MlflowClient(local_platform.config.tracking_uri)
    name = f"tune-test-{uuid.uuid4().hex[:6]}"
    logs = tmp_path_factory.mktemp("tune")
    started = time.monotonic()
    with open(logs / "first.log", "w") as log:
        first = subprocess.Popen([*ISRN, "tune", "tune-smoke", "--name", name, *SETS], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        finished_before = _wait_for_a_closed_trial(client, name, first, deadline_s=240)
        first.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and stops the running trial
        assert first.wait(timeout=120) == 130, (logs / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    history_before = {r.info.run_id: {m.step for m in client.get_metric_history(r.info.run_id, "val_ap_hard")}
                      for r in finished_before}
    resumed = subprocess.run([*ISRN, "tune", "tune-smoke", "--resume", name, *SETS], env=env,
                             capture_output=True, text=True, timeout=420)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    parent = client.search_runs([experiment.experiment_id], f"tags.`isrn.ray_run_name` = '{name}'")[0]
    return {"client": client, "name": name, "parent": parent, "experiment_id": experiment.experiment_id,
            "finished_before": finished_before, "history_before": history_before, "stdout": resumed.stdout,
            "wall_s": time.monotonic() - started}


def _wait_for_a_closed_trial(client, name: str, process: subprocess.Popen, deadline_s: float) -> list:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert process.poll() is None, "the study ended before its first trial finished"
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], f"tags.`isrn.study` = '{name}'")
            closed = [r for r in runs if r.data.tags.get("isrn.tune.role") != "study"
                      and r.info.status == "FINISHED"]
            if closed:
                return closed
        time.sleep(2)
    raise AssertionError(f"no trial of {name} finished within {deadline_s} s")
