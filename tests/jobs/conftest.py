"""Promotion fixtures: the session's MLflow server, and training-like runs logged the way training logs them.

`training_run` follows the contract of issue #12: the best evaluated checkpoint is the run's
LoggedModel (`mlflow.pytorch.log_model(name="model")`, its URI in tag `jobs.tags.MODEL_URI`) and carries
its own `val_ap_*` (`log_model_metrics`); the run's own last `val_ap_hard` is deliberately another
number, the last evaluation's, which promotion must not use.
"""

from __future__ import annotations

import uuid

import pytest

from jobs import tags as T
from jobs.local_platform import Platform


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
    uri = local_mlflow.config.mlflow_uri
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
