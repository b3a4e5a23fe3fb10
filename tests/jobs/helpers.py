"""Small helpers shared by the jobs tests (fixtures live in conftest.py)."""

from __future__ import annotations

import threading
import time


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a run's metric, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def train_in_background(spec, client, min_steps: int) -> tuple[threading.Thread, dict]:
    """`run_training(spec)` in a thread (its result in `outcome["result"]`); returns once the run has
    logged `min_steps` steps to MLflow, or the thread ended (`min_steps` never reached)."""
    from jobs.train.driver import run_training

    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_training(spec)), daemon=True)
    thread.start()
    started = time.monotonic()
    while time.monotonic() - started < 300 and thread.is_alive():
        experiment = client.get_experiment_by_name(spec.tracking.experiment)
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'",
                                  max_results=1) if experiment else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= min_steps:
            break
        time.sleep(0.5)
    return thread, outcome


def s3_outage(s3, seconds: float) -> None:
    """Stop the test S3 server for `seconds`, then start it again."""
    s3.stop()
    time.sleep(seconds)
    s3.start()
