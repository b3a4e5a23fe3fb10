"""MLflow for a study: a parent run, a nested child run per trial, and the study summary.

The driver creates the parent; each trial's trainable creates (or, on resume, reattaches to) its
child through `start_or_resume_run` with the `mlflow.parentRunId` tag, and passes the child's id to
rank 0 exactly as a training run does. `TrialRunStatus`, a Tune callback on the driver, closes each
child when its trial ends (ASHA kills a stopped trial's actor, so the trial cannot close it itself)
and tags whether ASHA stopped it. At the end the parent gets `trials.csv` and a plot of the metric
against each searched dimension.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from jobs import metrics as M
from jobs import tags
from jobs.train.tracking import find_run

log = logging.getLogger(__name__)


def trial_run_name(study: str, trial_id: str) -> str:
    """The Ray Train run name (and MLflow run key) of a trial: stable, so a resumed trial reattaches."""
    return f"{study}-{trial_id}"


def early_stop_epochs(trial_epochs: int, max_t: int | None) -> int:
    """Epochs a trial runs when nothing stops it early: its own, or ASHA's max_t if that is less."""
    return min(trial_epochs, max_t) if max_t else trial_epochs


class TrialRunStatus(Callback):
    """Closes each trial's child run with its status and tags whether ASHA stopped it.

    Holds plain values only: Tune pickles it with the experiment state and restores it on resume.
    """

    def __init__(self, tracking_uri: str, experiment: str, study: str, *, default_epochs: int,
                 max_t: int | None) -> None:
        self.tracking_uri, self.experiment, self.study = tracking_uri, experiment, study
        self.default_epochs, self.max_t = default_epochs, max_t
        self.epochs_key = "train.epochs"  # a trial's own epochs when the study searches them

    def _close(self, trial, status: str) -> None:
        from mlflow.tracking import MlflowClient

        run = find_run(self.tracking_uri, self.experiment, trial_run_name(self.study, trial.trial_id))
        if run is None:
            log.warning("trial %s has no MLflow run to close", trial.trial_id)
            return
        client = MlflowClient(self.tracking_uri)
        epochs_done = int((trial.last_result or {}).get(M.EPOCH, 0))
        planned = early_stop_epochs(int(trial.config.get(self.epochs_key, self.default_epochs)), self.max_t)
        early = status == "FINISHED" and epochs_done < planned
        client.set_tag(run.info.run_id, tags.EARLY_STOPPED, str(early).lower())
        client.set_tag(run.info.run_id, tags.EPOCHS_DONE, str(epochs_done))
        client.set_terminated(run.info.run_id, status=status)
        log.info("trial %s %s after %d epochs%s", trial.trial_id, status.lower(), epochs_done,
                 " (stopped early by the scheduler)" if early else "")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._close(trial, "FAILED")


def closed_trials(tracking_uri: str, experiment: str, parent_run_id: str) -> int:
    """Child runs that `TrialRunStatus` closed: fewer than the study's trials means it was interrupted.

    (Tune marks the trials it stops on Ctrl+C like finished ones, but calls no completion callback.)
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=1000)
    return sum(run.info.status in ("FINISHED", "FAILED") for run in runs)


# ---------------------------------------------------------------- the study summary
def trials_table(tracking_uri: str, experiment: str, parent_run_id: str, dimensions: list[str],
                 metric: str) -> list[dict[str, Any]]:
    """One row per child run of the study: trial, status, early stop, searched values, best metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                              max_results=1000)
    rows = []
    for run in runs:
        best = {}
        for name in M.AP_METRICS:
            history = [m.value for m in client.get_metric_history(run.info.run_id, name)]
            best[f"best_{name}"] = max(history) if history else math.nan
        rows.append({
            "trial_id": run.data.tags.get(tags.TRIAL_ID, ""), "run_id": run.info.run_id, "status": run.info.status,
            "early_stopped": run.data.tags.get(tags.EARLY_STOPPED, ""),
            "epochs_done": run.data.tags.get(tags.EPOCHS_DONE, ""),
            **{d: run.data.params.get(f"tune.{d}", run.data.params.get(d, "")) for d in dimensions},
            **best,
        })
    key = f"best_{metric}" if f"best_{metric}" in (rows[0] if rows else {}) else M.BEST_VAL_AP["hard"]
    rows.sort(key=lambda r: -r[key] if not math.isnan(r[key]) else math.inf)
    return rows


def plot_metric_vs_dimensions(rows: list[dict[str, Any]], dimensions: list[str], metric_key: str,
                              log_scale: set[str], path: Path) -> Path:
    """A subplot per searched dimension: the trials' best metric against the sampled value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(dimensions), figsize=(4 * len(dimensions), 3.4), squeeze=False)
    for axis, dim in zip(axes[0], dimensions):
        values = [_parse(r[dim]) for r in rows]
        scores = [r[metric_key] for r in rows]
        stopped = [r["early_stopped"] == "true" for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = values
        else:  # categorical: one column per distinct value
            labels = sorted({str(v) for v in values})
            xs = [labels.index(str(v)) for v in values]
            axis.set_xticks(range(len(labels)), labels)
        for x, y, s in zip(xs, scores, stopped):
            axis.scatter([x], [y], c="tab:red" if s else "tab:blue", marker="x" if s else "o")
        if numeric and dim in log_scale and all(x > 0 for x in xs):
            axis.set_xscale("log")
        axis.set_xlabel(dim)
        axis.set_ylabel(metric_key)
        axis.grid(alpha=0.3)
    fig.suptitle("trials (x: stopped early by the scheduler)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_study_summary(tracking_uri: str, experiment: str, parent_run_id: str, dimensions: list[str],
                      metric: str, log_scale: set[str]) -> list[dict[str, Any]]:
    """Write trials.csv, trials.json and the metric-vs-dimension plot into the parent run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    rows = trials_table(tracking_uri, experiment, parent_run_id, dimensions, metric)
    if not rows:
        return rows
    metric_key = f"best_{metric}" if f"best_{metric}" in rows[0] else M.BEST_VAL_AP["hard"]
    with tempfile.TemporaryDirectory(prefix="isrn-study-") as directory:
        table = Path(directory) / "trials.csv"
        with table.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        client.log_artifact(parent_run_id, str(table), "study")
        client.log_text(parent_run_id, json.dumps(rows, indent=1, default=str), "study/trials.json")
        plot = plot_metric_vs_dimensions(rows, dimensions, metric_key, log_scale,
                                         Path(directory) / f"{metric}_vs_dimensions.png")
        client.log_artifact(parent_run_id, str(plot), "study")
    finite = [r for r in rows if not math.isnan(r[metric_key])]
    now = int(time.time() * 1000)
    summary = {"trials": len(rows), "trials_early_stopped": sum(r["early_stopped"] == "true" for r in rows)}
    if finite:
        summary[f"best_{metric}"] = finite[0][metric_key]
        client.set_tag(parent_run_id, tags.BEST_TRIAL_RUN_ID, finite[0]["run_id"])
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    return rows


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
