"""A real study on the local platform: 4 tiny trials, ASHA, MLflow nesting, interrupt and resume.

One study serves every test of this module (it is the expensive part, ~3 min on 2 cores): it is
started with `isrn tune`, interrupted with Ctrl+C (SIGINT) once its first trial has finished, and
resumed with `isrn tune --resume`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ISRN = [sys.executable, "-m", "jobs.cli"]
EXPERIMENT = "isrn-tune-test"
# Trials alternate (Tune's grid order) between a threshold that lets detections through and one that
# leaves none (AP exactly 0), so ASHA's rung after epoch 1 has a trial to stop whatever the random lr.
SPACE = ('tune.space={"optim.lr": {"loguniform": [0.001, 0.05]}, '
         '"inference.score_threshold": {"grid_search": [0.001, 0.99]}}')
SETS = ["--set", f"tracking.experiment={EXPERIMENT}", "--set", SPACE, "--set", "tune.num_samples=2"]


def _children(client, experiment_id: str, parent_id: str):
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.fixture(scope="module")
def study(local_platform, tmp_path_factory):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, **local_platform.config.client_env(), "ISRN_STATE_DIR": str(local_platform.state)}
    client = MlflowClient(local_platform.config.mlflow_uri)
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
    history_before = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_ap_hard"))
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


def test_all_trials_nested_under_the_study_with_their_params(study) -> None:
    client, parent = study["client"], study["parent"]
    children = _children(client, study["experiment_id"], parent.info.run_id)
    assert len(children) == 4
    assert parent.info.status == "FINISHED" and parent.data.tags["isrn.tune.role"] == "study"
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["isrn.study"] == study["name"]
        # the searched values, as params under their own name and in the flattened spec
        assert float(child.data.params["tune.optim.lr"]) == pytest.approx(float(child.data.params["optim.lr"]))
        assert float(child.data.params["tune.inference.score_threshold"]) in (0.001, 0.99)
        assert "isrn.tune.early_stopped" in child.data.tags
        assert len(client.get_metric_history(child.info.run_id, "val_ap_hard")) >= 1  # per-epoch metrics


def test_asha_stopped_at_least_one_trial_early(study) -> None:
    children = _children(study["client"], study["experiment_id"], study["parent"].info.run_id)
    stopped = [c for c in children if c.data.tags["isrn.tune.early_stopped"] == "true"]
    assert len(children) == 4  # 2 samples × 2 grid points
    assert stopped, [(c.data.tags.get("isrn.tune.epochs_done"), c.data.metrics.get("val_ap_hard")) for c in children]
    assert all(c.data.tags["isrn.tune.epochs_done"] == "1" for c in stopped)
    print(f"study wall time {study['wall_s']:.0f} s, {len(stopped)} of 4 trials stopped early")


def test_parent_holds_trials_table_and_plot(study) -> None:
    client, parent = study["client"], study["parent"]
    names = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "study")}
    assert {"trials.csv", "trials.json", "val_ap_hard_vs_dimensions.png"} <= names
    table = Path(client.download_artifacts(parent.info.run_id, "study/trials.csv")).read_text().splitlines()
    assert table[0].startswith("trial_id,run_id,status,early_stopped") and len(table) == 5
    assert client.get_run(parent.info.run_id).data.metrics["trials"] == 4
    best = client.get_run(parent.info.run_id).data.tags["isrn.tune.best_run_id"]
    assert client.get_run(best).data.tags.get("isrn.model_uri", "").startswith("models:/")  # ready to promote


def test_resume_did_not_rerun_finished_trials(study) -> None:
    client = study["client"]
    for run in study["finished_before"]:
        after = client.get_run(run.info.run_id)
        assert after.info.end_time == run.info.end_time
        assert len(client.get_metric_history(run.info.run_id, "val_ap_hard")) == study["history_before"][run.info.run_id]
