"""The training job against the real local Ray, S3 and MLflow: DDP, checkpoints, tracking, faults."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.errors import ConfigError
from jobs.spec import load_spec
from jobs.train.driver import run_training
from tests.jobs.helpers import metric_history as _history
from tests.jobs.helpers import s3_outage, train_in_background

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def smoke_overrides(smoke_shards):
    return smoke_shards




def test_two_worker_ddp_run_is_tracked_checkpointed_and_detects(platform_env, local_s3, smoke_overrides, ray_shutdown):
    import cv2
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    spec = load_spec("smoke", smoke_overrides)
    outcome = run_training(spec)

    # Both ranks held identical parameters at every epoch end (checksums all-gathered).
    assert outcome.metrics["ddp_param_divergence"] == 0.0
    assert outcome.metrics["step"] == 12 and outcome.metrics["epoch"] == 2

    # Checkpoints are in the S3 bucket under the run's name.
    keys = [o["Key"] for o in local_s3.client().list_objects_v2(
        Bucket="isrn-checkpoints", Prefix=f"runs/{outcome.run_name}/").get("Contents", [])]
    assert any(k.endswith("training_state.pt") for k in keys), keys

    client = MlflowClient(platform_env.config.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.01" and run.data.params["scaling.num_workers"] == "2"
    assert run.data.tags["isrn.world_size"] == "2" and len(run.data.tags["isrn.git_commit"]) >= 7
    assert run.data.tags["isrn.val_manifest"] and run.data.tags["isrn.spec_fingerprint"] == spec.fingerprint()
    # Per-step metrics (every log_every_steps=2) and per-epoch AP.
    assert [s for s, _ in _history(client, run.info.run_id, "loss_cls_1")] == [2, 4, 6, 8, 10, 12]
    for key in ("loss_box_1", "loss_cls_2", "loss_box_2", "lr", "images_per_s", "data_s", "compute_s"):
        assert _history(client, run.info.run_id, key), key
    assert sorted({s for s, _ in _history(client, run.info.run_id, "val_ap_hard")}) == [6, 12]
    # Where each epoch's time went: shares of the accounted wall time, summing to 1.
    shares = {k: v for k, v in run.data.metrics.items() if k.startswith("time_share_")}
    assert {"time_share_data_wait", "time_share_forward", "time_share_backward", "time_share_optimizer",
            "time_share_checkpoint", "time_share_evaluation"} <= set(shares), shares
    assert abs(sum(shares.values()) - 1) < 1e-6
    # The logged model is the best evaluated checkpoint, and carries its own numbers.
    history = dict(_history(client, run.info.run_id, "val_ap_hard"))
    best_step = int(run.data.metrics["best_step"])
    assert best_step in (6, 12) and run.data.metrics["best_val_ap_hard"] == history[best_step]
    assert run.data.metrics["best_val_ap_hard"] == max(history.values())
    logged = mlflow.get_logged_model(outcome.model_uri.removeprefix("models:/"))
    model_metrics = {m.key: m.value for m in logged.metrics}
    assert model_metrics["val_ap_hard"] == run.data.metrics["best_val_ap_hard"]
    assert logged.params["best_step"] == str(best_step)
    assert outcome.best_checkpoint.endswith(f"step_{best_step:08d}")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec", "pr_curves", "val_images"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "pr_curves")} == {
        "pr_curves/pr_epoch_001.png", "pr_curves/pr_epoch_002.png"}

    # The logged model loads back with MLflow and detects faces in a photo (the pyfunc of jobs.serving).
    assert outcome.model_uri and outcome.model_uri.startswith("models:/")
    model = mlflow.pyfunc.load_model(outcome.model_uri)
    photo = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))[1]
    detections = model.predict(pd.DataFrame({"image": [photo.tobytes()]}), params={"score_threshold": 0.0})
    assert list(detections.columns) == ["image", "x1", "y1", "x2", "y2", "score"]
    assert len(detections) <= spec.inference.keep_top_k and np.isfinite(detections.to_numpy()).all()


def test_killed_workers_resume_from_the_latest_complete_checkpoint(platform_env, local_s3, smoke_overrides,
                                                                   ray_shutdown, monkeypatch):
    """Two kills at known points of one run (jobs/train/faults.py), each fired once:

    1. rank 0 dies inside the upload of the step-4 checkpoint, after its marker is written and
       before Ray can have collected the report: Ray has registered nothing, the checkpoint is
       complete in S3 only, and the restarted group must resume from step 4 (not from 0);
    2. rank 0 dies after step 10, once Ray has committed the step-8 checkpoint: resume from 8.
    Smoke: 6 steps per epoch, checkpoints every 4 steps and at each epoch end (4, 6, 8, 12, ...).
    """
    import json

    from mlflow.tracking import MlflowClient

    from jobs.train.checkpoint_store import COMPLETE_MARKER

    monkeypatch.setenv("ISRN_FAULT_PLAN", json.dumps([
        {"point": "checkpoint_uploaded", "step": 4},
        {"point": "step_end", "step": 10, "after_commit": True},
    ]))
    spec = load_spec("smoke", [*smoke_overrides, "train.epochs=3", "train.log_every_steps=1",
                               "scaling.max_failures=2"])
    result = run_training(spec)
    assert result.metrics["step"] == 18 and result.metrics["epoch"] == 3

    client = MlflowClient(platform_env.config.tracking_uri)
    run_id = result.mlflow_run_id
    assert [value for _, value in _history(client, run_id, "resumed_from_step")] == [4.0, 8.0]
    # A test's fault plan is never silent: the run says it was active.
    assert '"point": "checkpoint_uploaded"' in client.get_run(run_id).data.tags["isrn.fault_plan"]
    # One run, one continuous history: every step logged, the counter never went back to 0.
    steps = [s for s, _ in _history(client, run_id, "loss")]
    assert steps.count(1) == 1 and set(steps) == set(range(1, 19))
    assert client.get_run(run_id).info.status == "FINISHED"

    # Afterwards the run folder holds only complete checkpoints that Ray kept: the step-4 one that
    # Ray never registered was pruned by the platform.
    keys = [o["Key"] for o in local_s3.client().list_objects_v2(
        Bucket="isrn-checkpoints", Prefix=f"runs/{result.run_name}/").get("Contents", [])]
    folders = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("step_")}
    assert folders and "step_00000004" not in folders, folders
    assert all(f"runs/{result.run_name}/{folder}/{COMPLETE_MARKER}" in keys for folder in folders), keys
    assert result.best_checkpoint and result.best_checkpoint.rsplit("/", 1)[-1] in folders


@pytest.fixture(scope="module")
def local_smoke_shards(smoke_shards, tmp_path_factory) -> list[str]:
    """The smoke data set sharded into a local folder: a run whose only S3 traffic is its checkpoints."""
    from data_shards.shard_writer import build_split

    root = next(s.split("=", 1)[1] for s in smoke_shards if s.startswith("data.synth.root="))
    out = tmp_path_factory.mktemp("smoke-shards")
    for split in ("train", "val"):
        build_split(root, split, str(out), shard_size_mb=0.5, progress=False)  # as the smoke spec's
    return [f"data.shards={out}", "data.synth=null"]


def test_the_run_survives_a_checkpoint_storage_outage(platform_env, local_s3, local_smoke_shards, ray_shutdown):
    """S3 is stopped for 8 s while checkpoints upload every step. Whichever write meets the outage
    first, a worker's upload (Ray Train restarts the worker group) or Ray Train's controller's
    bookkeeping (the driver waits for S3 to take a write and fits again under the same name), the
    run continues from the newest complete checkpoint, in the same MLflow run, which counts the
    outage: a run that passes because nothing wrote while S3 was away fails here."""
    from mlflow.tracking import MlflowClient

    from jobs.train.checkpoint_store import COMPLETE_MARKER

    spec = load_spec("smoke", [*local_smoke_shards, "train.epochs=2", "checkpoint.every_steps=1",
                               "train.log_every_steps=1", "scaling.max_failures=5", "tracking.log_model=false",
                               "tracking.experiment=isrn-storage-outage", "eval.every_epochs=2"])
    client = MlflowClient(platform_env.config.tracking_uri)
    thread, outcome = train_in_background(spec, client, min_steps=2)
    assert thread.is_alive(), "the run ended before S3 was stopped"
    s3_outage(local_s3, 8)
    thread.join(timeout=900)
    result = outcome["result"]
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and result.metrics["epoch"] == 2
    assert result.storage_outages >= 1 and int(run.data.tags["isrn.storage_outages"]) == result.storage_outages
    assert _history(client, result.mlflow_run_id, "resumed_from_step")  # it continued from a checkpoint
    steps = [s for s, _ in _history(client, result.mlflow_run_id, "loss")]
    assert steps == list(range(1, 13))  # one history, each step once
    keys = [o["Key"] for o in local_s3.client().list_objects_v2(
        Bucket="isrn-checkpoints", Prefix=f"runs/{result.run_name}/").get("Contents", [])]
    folders = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("step_")}
    assert folders and all(f"runs/{result.run_name}/{f}/{COMPLETE_MARKER}" in keys for f in folders)
    print(f"\nS3 down 8 s during uploads: {result.storage_outages} outage(s), resumed from "
          f"{[int(v) for _, v in _history(client, result.mlflow_run_id, 'resumed_from_step')]}, run FINISHED")


def test_missing_manifest_fails_before_any_worker(platform_env, fresh_bucket):
    import ray

    spec = load_spec("smoke", ["data.synth=null", f"data.shards=s3://{fresh_bucket}/nothing"])
    with pytest.raises(ConfigError, match=rf"no train shard manifest at s3://{fresh_bucket}/nothing/train/manifest.json"):
        run_training(spec)
    assert not ray.is_initialized()


def test_missing_bucket_and_wrong_credentials_fail_before_any_worker(platform_env, monkeypatch):
    spec = load_spec("smoke", ["data.synth=null", "data.shards=s3://no-such-bucket/x"])
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        run_training(spec)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ConfigError, match="refused the credentials"):
        run_training(load_spec("smoke", ["data.synth=null"]))


def test_the_logged_model_is_the_best_evaluated_checkpoint_and_reproduces_its_ap(platform_env, smoke_overrides,
                                                                                 ray_shutdown):
    """Evaluation every 2 epochs and a learning rate raised ×1000 after epoch 2, so training
    diverges and the best evaluated epoch is the first evaluation (epoch 2), not the last (epoch 4).
    The logged model is that checkpoint's; `isrn evaluate --model` of it gives the AP it carries; promotion
    compares that number."""
    import json
    import re

    import mlflow
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from jobs.commands.evaluate import evaluate
    from jobs.promotion import promote

    # The same pixels through both evaluations: one val image per batch, padded to multiples of 128, as
    # the logged model pads each photo (at its default max_size, the spec's val_max_size).
    spec = load_spec("smoke", [*smoke_overrides, "train.epochs=4", "eval.every_epochs=2", "train.log_every_steps=6",
                               "optim.schedule=step", "optim.milestones=[0.5]", "optim.gamma=1000",
                               "inference.score_threshold=0.001", "loader.val_batch_size=1",
                               "tracking.experiment=isrn-best-checkpoint"])
    outcome = run_training(spec)
    client = MlflowClient(platform_env.config.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    evaluations = dict(_history(client, run.info.run_id, "val_ap_hard"))   # step -> AP (6 steps an epoch)
    assert sorted(evaluations) == [12, 24] and evaluations[12] > evaluations[24], evaluations
    assert run.data.metrics["best_step"] == 12 and run.data.metrics["best_epoch"] == 2
    assert run.data.metrics["best_val_ap_hard"] == evaluations[12]
    assert outcome.best_checkpoint.endswith("step_00000012")
    logged = mlflow.get_logged_model(outcome.model_uri.removeprefix("models:/"))
    logged_ap = {m.key: m.value for m in logged.metrics}
    assert logged_ap["val_ap_hard"] == evaluations[12]

    evaluated = CliRunner().invoke(evaluate, ["--model", outcome.model_uri, "--shards", spec.data.shards, "--json", "-"])
    assert evaluated.exit_code == 0, evaluated.output
    document = json.loads(evaluated.output[evaluated.output.index('{\n "easy"'):])  # after MLflow's progress
    ap = {setting: document[setting]["all"]["ap"] for setting in ("easy", "medium", "hard")}
    assert abs(ap["hard"] - logged_ap["val_ap_hard"]) < 1e-3, (ap, logged_ap)

    result = promote(platform_env.config.tracking_uri, experiment="isrn-best-checkpoint",
                     name=f"isrn-best-{outcome.run_name}", run_id=run.info.run_id)
    assert result.candidate.metric == logged_ap["val_ap_hard"]
    print(f"\nbest evaluated epoch 2 (AP hard {evaluations[12]:.4f}; epoch 4: {evaluations[24]:.4f}); "
          f"isrn evaluate --model of the logged model: {ap['hard']:.4f}; promotion compared {result.candidate.metric:.4f}")
