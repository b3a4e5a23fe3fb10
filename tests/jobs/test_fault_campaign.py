"""The fault campaign: what the platform survives, shown on the real local S3, MLflow and Ray.

Minutes long, so not in `make test`: `python bench/fault_campaign.py` (or `pytest -m campaign`).

- 10 worker kills in one run, at seeded random steps, each after Ray committed the checkpoints
  reported so far: every kill resumes from the last checkpoint before it, no epoch is lost, the MLflow run
  holds each step's metrics once, and the final weights equal those of an unkilled run of the seed;
- S3 stopped for a few seconds while checkpoints upload: a worker's upload fails (Ray Train restarts
  the worker group) or Ray Train's controller ends the fit on its failed bookkeeping write (the
  driver waits for S3 and fits again under the same run name); either way the run resumes from a
  complete checkpoint, finishes in the same MLflow run and counts the outage (tag
  `isrn.storage_outages`); no folder without its marker is ever resumed from (`make test` has a
  one-epoch version: tests/jobs/train/test_train_ray.py);
- MLflow stopped for a while mid-run: training goes on, the metrics reach the run when it returns;
- a Tune trial that crashes: the study reports it and exits non-zero, the other trial finishes.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from jobs.spec import load_spec
from jobs.train.driver import run_training
from tests.jobs.helpers import metric_history as _history
from tests.jobs.helpers import s3_outage, train_in_background

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.campaign]

STEPS_PER_EPOCH, EPOCHS, EVERY = 6, 4, 2   # smoke: 48 train images, batch 4, 2 workers
CHECKPOINTS = sorted({s for s in range(EVERY, STEPS_PER_EPOCH * EPOCHS + 1, EVERY)} |
                     {STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)})


def _final_weights(result, local_s3):
    import io

    import torch

    last = f"runs/{result.run_name}/step_{STEPS_PER_EPOCH * EPOCHS:08d}/training_state.pt"
    body = local_s3.client().get_object(Bucket="isrn-checkpoints", Key=last)["Body"].read()
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)["model"]


def test_ten_kills_in_a_row(platform_env, local_s3, smoke_shards, ray_shutdown, monkeypatch):
    import torch
    from mlflow.tracking import MlflowClient

    overrides = [*smoke_shards, f"train.epochs={EPOCHS}", f"checkpoint.every_steps={EVERY}", "train.log_every_steps=1",
                 "scaling.max_failures=10", "eval.every_epochs=4", "checkpoint.keep=1"]
    kills = sorted(random.Random(13).sample(range(3, STEPS_PER_EPOCH * EPOCHS), 10))
    monkeypatch.setenv("ISRN_FAULT_PLAN", json.dumps(
        [{"point": "step_end", "step": step, "rank": i % 2, "after_commit": True} for i, step in enumerate(kills)]))
    started = time.monotonic()
    killed = run_training(load_spec("smoke", overrides))
    killed_s = time.monotonic() - started
    monkeypatch.delenv("ISRN_FAULT_PLAN")
    started = time.monotonic()
    clean = run_training(load_spec("smoke", overrides))
    clean_s = time.monotonic() - started

    client = MlflowClient(platform_env.config.tracking_uri)
    resumed = [int(v) for _, v in _history(client, killed.mlflow_run_id, "resumed_from_step")]
    # Each kill lands after step k, before that step's own checkpoint report, once Ray committed
    # every checkpoint reported so far: the run resumes from the last checkpoint before k.
    expected = [max(c for c in CHECKPOINTS if c < k) for k in kills]
    assert resumed == expected, (kills, resumed)
    steps = [s for s, _ in _history(client, killed.mlflow_run_id, "loss")]
    assert steps == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))  # each step's metrics once
    assert sorted({int(v) for _, v in _history(client, killed.mlflow_run_id, "epoch")}) == list(range(1, EPOCHS + 1))
    assert client.get_run(killed.mlflow_run_id).info.status == "FINISHED"
    a, b = _final_weights(killed, local_s3), _final_weights(clean, local_s3)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst <= 1e-5, worst
    print(f"\n10 kills at steps {kills}: resumed from {resumed}; killed run {killed_s:.0f} s, unkilled {clean_s:.0f} s; "
          f"largest weight difference to the unkilled run {worst:.2e} "
          f"({'bitwise equal' if all(torch.equal(a[k], b[k]) for k in a) else 'within tolerance'})")


def test_s3_down_while_checkpoints_upload(platform_env, local_s3, smoke_shards, ray_shutdown):
    from mlflow.tracking import MlflowClient

    spec = load_spec("smoke", [*smoke_shards, "train.epochs=3", "checkpoint.every_steps=1", "scaling.max_failures=5",
                               "train.log_every_steps=1"])
    client = MlflowClient(platform_env.config.tracking_uri)
    # Once training has logged a few steps, S3 goes away for 8 s (checkpoints upload every step).
    thread, outcome = train_in_background(spec, client, min_steps=3)
    s3_outage(local_s3, 8)
    thread.join(timeout=900)
    result = outcome["result"]
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and result.metrics["epoch"] == 3
    # The outage happened (Ray Train's controller lost its storage) and was survived: not a run that
    # passes because S3 came back before anything wrote.
    assert result.storage_outages >= 1 and run.data.tags["isrn.storage_outages"] == str(result.storage_outages)
    resumed = [int(v) for _, v in _history(client, result.mlflow_run_id, "resumed_from_step")]
    keys = [o["Key"] for o in local_s3.client().list_objects_v2(
        Bucket="isrn-checkpoints", Prefix=f"runs/{result.run_name}/").get("Contents", [])]
    folders = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("step_")}
    assert all(f"runs/{result.run_name}/{f}/COMPLETE.json" in keys for f in folders)  # nothing half-written kept
    print(f"\nS3 down 8 s during uploads: {result.storage_outages} outage(s), resumed from {resumed}; run FINISHED")


def test_mlflow_down_mid_run(platform_env, local_platform, smoke_shards, ray_shutdown):
    from mlflow.tracking import MlflowClient

    spec = load_spec("smoke", [*smoke_shards, "train.epochs=3", "train.log_every_steps=1"])
    client = MlflowClient(platform_env.config.tracking_uri)
    thread, outcome = train_in_background(spec, client, min_steps=2)
    local_platform.down(only=("mlflow",))
    down = time.monotonic()
    time.sleep(20)
    local_platform.up(only=("mlflow",))
    thread.join(timeout=900)
    result = outcome["result"]
    steps = [s for s, _ in _history(client, result.mlflow_run_id, "loss")]
    assert steps == list(range(1, 3 * STEPS_PER_EPOCH + 1))  # none lost while MLflow was away, none twice
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    print(f"\nMLflow down {time.monotonic() - down:.0f} s mid-run: every step's metrics arrived once, run FINISHED")


def test_a_crashing_trial_fails_the_study_after_the_others_finish(platform_env, local_platform):
    from mlflow.tracking import MlflowClient

    # lr 1e30: the first step's loss is finite, the next not (NonFiniteLossError, retried once by Train).
    space = 'tune.space={"optim.lr": {"grid_search": [0.01, 1.0e+30]}}'
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "tune", "tune-smoke", "--set", space,
                           "--set", "tune.num_samples=1", "--set", "tracking.experiment=isrn-tune-crash",
                           "--set", "optim.warmup_steps=0", "--set", "train.grad_clip_norm=null"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 of 2 trials failed" in done.stderr, done.stderr[-3000:]
    client = MlflowClient(platform_env.config.tracking_uri)
    experiment = client.get_experiment_by_name("isrn-tune-crash").experiment_id
    trials = [r for r in client.search_runs([experiment]) if r.data.tags.get("isrn.tune.role") != "study"]
    assert sorted(r.info.status for r in trials) == ["FAILED", "FINISHED"]
    print("\na crashing trial: study exit code 1, the other trial FINISHED")
