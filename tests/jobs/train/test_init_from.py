"""`model.init_from`: weights fetched from a checkpoint (folder, file, S3) or an MLflow model, and a
fine-tune of the smoke model from another smoke run, through `run_worker` in one CPU process."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import torch

from data_shards.manifest import manifest_url
from data_shards.shard_writer import build_split
from data_shards.storage import S3Settings
from data_shards.synth import SynthConfig, generate_dataset
from isrn_model.builder import build_isrn
from isrn_model.config import ModelConfig
from isrn_model.export import save_model
from jobs.spec import load_spec
from jobs.train import worker
from jobs.train.checkpoints import STATE_FILE, TrainingState, save_checkpoint
from jobs.train.init_from import fetch_state_dict, initialise_from
from tests.jobs.train.conftest import run_local

TINY = ModelConfig(depth=18, base_width=16, fpn_channels=32, head_channels=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A tiny model and a training checkpoint folder holding it."""
    torch.manual_seed(1)
    model = build_isrn(TINY)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_000001"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(folder, model, optimizer, TrainingState(step=3), {"name": "a"})
    return model, folder


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_from_a_checkpoint_folder_or_its_file(trained):
    model, folder = trained
    for uri in (str(folder), str(folder / STATE_FILE)):
        fresh = build_isrn(TINY)
        report = initialise_from(fresh, uri)
        assert report.new == () and report.skipped == () and _same_weights(fresh, model)
    assert initialise_from(build_isrn(TINY), None) is None


def test_a_missing_checkpoint_names_the_uri_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"model.init_from {tmp_path}: no .*{STATE_FILE}; give a checkpoint folder"):
        fetch_state_dict(str(tmp_path))


def test_from_a_checkpoint_in_s3(trained, monkeypatch):
    from moto import mock_aws

    model, folder = trained
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        settings = S3Settings(access_key="test", secret_key="test")
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="ckpts")
        client.upload_file(str(folder / STATE_FILE), "ckpts", f"runs/r1/checkpoint_000001/{STATE_FILE}")
        fresh = build_isrn(TINY)
        report = initialise_from(fresh, "s3://ckpts/runs/r1/checkpoint_000001", settings=settings)
        assert report.new == () and _same_weights(fresh, model)


def test_from_an_mlflow_logged_model(trained, tmp_path):
    from mlflow.tracking import MlflowClient

    model, _ = trained
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("init-from", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    eager = tmp_path / "isrn_model.pt"
    save_model(model, eager)
    client.log_artifact(run_id, str(eager), "model/extra_files")  # where log_detector's extra file lands
    client.log_text(run_id, "not a model", "other/readme.txt")
    fresh = build_isrn(TINY)
    report = initialise_from(fresh, f"runs:/{run_id}/model", tracking_uri=tracking_uri)
    assert report.new == () and _same_weights(fresh, model)
    with pytest.raises(FileNotFoundError, match="no isrn_model.pt in the logged model"):
        fetch_state_dict(f"runs:/{run_id}/other", tracking_uri=tracking_uri)


# ---- the training loop, one CPU process ------------------------------------------------------------


def _run(shards: str, tmp_path: Path, monkeypatch, *overrides: str, restore: Path | None = None):
    session, tracker, _ = run_local(shards, tmp_path, monkeypatch, *overrides, restore=restore)
    return session, tracker


def test_fine_tune_the_smoke_model_from_another_smoke_run(local_shards, tmp_path, monkeypatch):
    shards = local_shards
    first, _ = _run(shards, tmp_path / "a", monkeypatch)
    checkpoint = first.restore_dir()  # the last checkpoint LocalSession moved into place
    assert (checkpoint / STATE_FILE).is_file()

    second, tracker = _run(shards, tmp_path / "b", monkeypatch, f"model.init_from={checkpoint}")
    report = tracker.texts["init_from/report.md"]
    assert f"# init_from {checkpoint}" in report and "0 skipped (not in the model), 0 newly initialised" in report
    assert second.reports[-1]["epoch"] == 1

    # a resumed run keeps its own weights: init_from is not even fetched (this path does not exist)
    _, resumed = _run(shards, tmp_path / "c", monkeypatch, "model.init_from=/nonexistent", "train.epochs=2",
                      restore=checkpoint)
    assert "init_from/report.md" not in resumed.texts
