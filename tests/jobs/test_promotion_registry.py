"""`isrn promote` against the real local MLflow: register, champion, refusal, dry run, races, errors."""

from __future__ import annotations

import threading
import uuid

import pytest
from click.testing import CliRunner

from jobs.commands.promote import promote as promote_cmd
from jobs.promotion import CHAMPION, PREVIOUS, PromotionError, PromotionRule, promote

pytestmark = pytest.mark.integration


def _experiment(client) -> str:
    name = f"promote-{uuid.uuid4().hex[:8]}"
    client.create_experiment(name)
    return name


def _run_with_model(client, experiment: str, ap_hard: float | None, *, val_manifest: str = "val-1111",
                    status: str = "FINISHED", model: bool = True) -> str:
    """A finished training-like run: lineage tags, AP metrics and a tiny logged model."""
    import mlflow
    import torch

    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id, tags={
        "isrn.spec": "smoke", "isrn.spec_fingerprint": "f" * 16, "isrn.train_manifest": "train-0000",
        "isrn.val_manifest": val_manifest, "isrn.git_commit": "abc123"})
    run_id = run.info.run_id
    if ap_hard is not None:
        client.log_metric(run_id, "val_ap_hard", ap_hard, step=1)
        client.log_metric(run_id, "val_ap_easy", ap_hard + 0.1, step=1)
    if model:
        mlflow.set_experiment(experiment_id=exp.experiment_id)  # start_run refuses another active experiment
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(torch.nn.Linear(2, 1), name="model", serialization_format="pickle")
            mlflow.set_tag("isrn.model_uri", info.model_uri)
    client.set_terminated(run_id, status=status)
    return run_id


@pytest.fixture
def mlflow_env(platform_env):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = platform_env.config.mlflow_uri
    mlflow.set_tracking_uri(uri)
    return uri, MlflowClient(uri)


def test_promotes_best_then_refuses_worse_and_dry_run_changes_nothing(mlflow_env) -> None:
    uri, client = mlflow_env
    experiment, model = _experiment(client), f"face-{uuid.uuid4().hex[:6]}"
    first = _run_with_model(client, experiment, 0.30)
    _run_with_model(client, experiment, 0.10)

    result = promote(uri, experiment=experiment, name=model)  # best of the two: 0.30
    assert result.decision.promote and result.candidate.run_id == first
    champion = client.get_model_version_by_alias(model, CHAMPION)
    assert champion.version == result.version and champion.run_id == first
    tags = champion.tags
    assert tags["isrn.run_id"] == first and tags["isrn.val_manifest"] == "val-1111"
    assert tags["isrn.spec_fingerprint"] == "f" * 16 and tags["isrn.git_commit"] == "abc123"
    assert float(tags["isrn.metric.val_ap_hard"]) == 0.30

    better = _run_with_model(client, experiment, 0.50)
    before = [(v.version, dict(v.aliases and {a: 1 for a in v.aliases} or {})) for v in client.search_model_versions(f"name = '{model}'")]
    cli = CliRunner().invoke(promote_cmd, ["--experiment", experiment, "--model-name", model, "--dry-run"])
    assert cli.exit_code == 0, cli.output
    assert "[dry run] would move" in cli.output and better in cli.output
    after = [(v.version, dict(v.aliases and {a: 1 for a in v.aliases} or {})) for v in client.search_model_versions(f"name = '{model}'")]
    assert after == before  # no version registered, no alias moved

    worse = _run_with_model(client, experiment, 0.29)
    refused = promote(uri, experiment=experiment, name=model, run_id=worse)
    assert not refused.decision.promote and "does not beat champion v1" in refused.decision.reason
    assert client.get_model_version_by_alias(model, CHAMPION).version == result.version
    assert client.get_model_version(model, refused.version).tags["isrn.promotion"] == refused.decision.reason

    cli = CliRunner().invoke(promote_cmd, ["--experiment", experiment, "--model-name", model, "--margin", "0.1"])
    assert cli.exit_code == 0 and "moved" in cli.output, cli.output
    assert client.get_model_version_by_alias(model, CHAMPION).run_id == better
    assert client.get_model_version_by_alias(model, PREVIOUS).version == result.version


def test_refuses_a_champion_validated_on_another_manifest(mlflow_env) -> None:
    uri, client = mlflow_env
    experiment, model = _experiment(client), f"face-{uuid.uuid4().hex[:6]}"
    promote(uri, experiment=experiment, name=model, run_id=_run_with_model(client, experiment, 0.2))
    other = _run_with_model(client, experiment, 0.9, val_manifest="val-2222")
    result = promote(uri, experiment=experiment, name=model, run_id=other)
    assert not result.decision.promote and "not comparable" in result.decision.reason


def test_two_concurrent_promotions_leave_the_better_champion(mlflow_env) -> None:
    uri, client = mlflow_env
    experiment, model = _experiment(client), f"face-{uuid.uuid4().hex[:6]}"
    promote(uri, experiment=experiment, name=model, run_id=_run_with_model(client, experiment, 0.1))
    good, bad = _run_with_model(client, experiment, 0.6), _run_with_model(client, experiment, 0.4)
    start = threading.Barrier(2)
    outcomes, errors = {}, []

    def race(run_id: str) -> None:
        try:
            start.wait()
            outcomes[run_id] = promote(uri, experiment=experiment, name=model, run_id=run_id)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=race, args=(r,)) for r in (bad, good)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert client.get_model_version_by_alias(model, CHAMPION).run_id == good
    # Whoever went second decided against what the first had set: never two "promoted" ending on bad.
    assert outcomes[good].decision.promote
    # the lock is gone
    assert not client.search_registered_models(f"name = '{model}.promotion-lock'")


def test_clear_errors(mlflow_env, monkeypatch) -> None:
    uri, client = mlflow_env
    empty = _experiment(client)
    with pytest.raises(PromotionError, match="has no finished run"):
        promote(uri, experiment=empty, name="never")
    _run_with_model(client, empty, None, model=False)
    with pytest.raises(PromotionError, match="no finished run .* has metric 'val_ap_hard'"):
        promote(uri, experiment=empty, name="never")
    with pytest.raises(PromotionError, match="metric 'val_ap_medium'"):
        promote(uri, experiment=empty, name="never", rule=PromotionRule(metric="val_ap_medium"))
    with pytest.raises(PromotionError, match="no MLflow experiment named 'nope-"):
        promote(uri, experiment=f"nope-{uuid.uuid4().hex[:4]}", name="never")

    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    cli = CliRunner().invoke(promote_cmd, ["--experiment", empty])
    assert cli.exit_code == 1 and f"MLflow registry at {dead} is unreachable" in cli.output
