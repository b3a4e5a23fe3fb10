"""Small helpers shared by the jobs tests (fixtures live in conftest.py)."""

from __future__ import annotations


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a run's metric, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
