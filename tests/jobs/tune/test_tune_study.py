"""A real study on the local platform: 4 tiny trials, ASHA, MLflow nesting, interrupt and resume.

One study serves every test of this module (it is the expensive part, ~3 min on 2 cores): it is
started with `isrn tune`, interrupted with Ctrl+C (SIGINT) once its first trial has finished, and
resumed with `isrn tune --resume`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

def _children(client, experiment_id: str, parent_id: str):
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.fixture(scope="module")
def study(tune_study):
    """The session's study (tests/jobs/conftest.py: the secret scan reads it too)."""
    return tune_study


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
        # (Logging the best trial's model adds its AP at the best step again: compare the steps.)
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_ap_hard")}
        assert steps == study["history_before"][run.info.run_id]
