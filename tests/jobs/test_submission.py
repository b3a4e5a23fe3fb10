"""`isrn submit`: the address the user gives wins, and nothing from this shell travels unless named."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from jobs.spec import load_spec
from jobs.submission import (
    SPEC_FILE, SubmissionError, build_submission, is_local_platform, parse_env, read_runtime_env, submission_address,
)


def test_the_explicit_address_wins_and_gets_a_scheme():
    assert submission_address("http://cluster:8265/", "http://127.0.0.1:8265") == "http://cluster:8265"
    assert submission_address(None, "127.0.0.1:8265") == "http://127.0.0.1:8265"


def test_env_items_take_values_and_refuse_credentials():
    assert parse_env(("A=1", "B"), {"B": "from-shell"}) == {"A": "1", "B": "from-shell"}
    with pytest.raises(SubmissionError, match="--env C: not set in this shell"):
        parse_env(("C",), {})
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "HF_TOKEN", "DB_PASSWORD"):
        with pytest.raises(SubmissionError, match=f"--env {key}: credentials never travel"):
            parse_env((f"{key}=x",), {})


def test_runtime_env_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("pip: [rich]\nenv_vars: {WANDB_MODE: offline}\n")
    assert read_runtime_env(good) == {"pip": ["rich"], "env_vars": {"WANDB_MODE": "offline"}}
    (tmp_path / "wd.yaml").write_text("working_dir: .\n")
    with pytest.raises(SubmissionError, match="working_dir is the resolved spec's folder"):
        read_runtime_env(tmp_path / "wd.yaml")
    (tmp_path / "secret.json").write_text('{"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}}')
    with pytest.raises(SubmissionError, match="AWS_SECRET_ACCESS_KEY: credentials never travel"):
        read_runtime_env(tmp_path / "secret.json")


def test_a_remote_cluster_gets_the_spec_and_what_the_user_named_only(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "laptop-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://laptop:5000")
    spec = load_spec("smoke")
    entrypoint, runtime_env, folder = build_submission(spec, "train", local=False, env_vars={"A": "1"},
                                                       runtime_env={"pip": ["rich"], "env_vars": {"B": "2"}})
    assert entrypoint == f"python -m jobs.cli train {SPEC_FILE}"
    assert runtime_env == {"pip": ["rich"], "working_dir": str(folder), "env_vars": {"B": "2", "A": "1"}}
    assert load_spec(folder / SPEC_FILE) == spec
    entrypoint, runtime_env, folder = build_submission(spec, "tune", local=True)
    assert entrypoint == f"{sys.executable} -m jobs.cli tune {SPEC_FILE}" and runtime_env == {"working_dir": str(folder)}


def test_no_platform_id_or_no_answer_means_remote():
    assert not is_local_platform("http://127.0.0.1:8265", None)
    assert not is_local_platform("http://127.0.0.1:1", "abc")


@pytest.mark.integration
def test_submit_goes_to_the_given_address_and_sends_no_credential(platform_env, monkeypatch):
    from ray.job_submission import JobSubmissionClient

    from jobs.cli import main

    url = platform_env.config.ray_dashboard_url
    # Another cluster in the environment (as `eval "$(isrn platform env)"` of some other platform leaves).
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:2")
    result = CliRunner().invoke(main, ["submit", "smoke", "--address", url, "--no-wait", "--env", "ISRN_NOTE=hello",
                                       "--submission-id", "isrn-test-address", "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    assert f"submitted job isrn-test-address to {url} (the local platform)" in result.output
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    monkeypatch.delenv("RAY_ADDRESS")
    client = JobSubmissionClient(url)
    info = client.get_job_info("isrn-test-address")
    client.stop_job("isrn-test-address")
    assert info.entrypoint.startswith(sys.executable)  # recognised as the local platform by its head's label
    assert info.runtime_env["env_vars"] == {"ISRN_NOTE": "hello"}
    assert platform_env.config.s3.secret_key not in str(info)


@pytest.mark.integration
@pytest.mark.slow
def test_two_submissions_in_one_second_are_two_runs_and_a_live_run_is_not_resumed(platform_env, smoke_shards,
                                                                                   ray_shutdown, monkeypatch):
    """Two `isrn submit` of one spec in the same second: two run names, two MLflow runs, two storage
    folders each with its own writer lease. While they run, `isrn train --resume` of one of them is
    refused: a live job holds it (its lease is renewed while the resume watches)."""
    import datetime as dt
    import time

    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    from jobs.cli import main
    from jobs.train import resume
    from jobs.train.lease import LEASE_FILE

    url = platform_env.config.ray_dashboard_url
    experiment = "isrn-submit-twice"
    sets = [*smoke_shards, "train.epochs=1", "scaling.num_workers=1", "tracking.log_model=false",
            "checkpoint.lease_timeout_s=20", f"tracking.experiment={experiment}"]
    # Two submissions from a script, in the same second.
    monkeypatch.setattr(resume, "utc_now", lambda: dt.datetime(2026, 11, 29, 10, 15, 0, tzinfo=dt.UTC))
    names, jobs = [], []
    for _ in range(2):
        result = CliRunner().invoke(main, ["submit", "smoke", "--address", url, "--no-wait",
                                           *(a for s in sets for a in ("--set", s))])
        assert result.exit_code == 0, result.output
        jobs.append(result.output.split("submitted job ", 1)[1].split()[0])
        names.append(result.output.split(": run ", 1)[1].split()[0])
    assert names[0] != names[1] and all(n.startswith("smoke-20261129-101500-") for n in names), names

    client, jobs_api = MlflowClient(platform_env.config.tracking_uri), JobSubmissionClient(url)
    s3 = platform_env.config
    try:
        deadline = time.monotonic() + 240
        runs, leases = {}, {}
        while time.monotonic() < deadline and (len(runs) < 2 or len(leases) < 2):
            found = client.get_experiment_by_name(experiment)
            for name in names:
                hits = client.search_runs([found.experiment_id], f"tags.`isrn.ray_run_name` = '{name}'") if found else []
                if hits:
                    runs[name] = hits[0].info.run_id
                key = f"runs/{name}/{LEASE_FILE}"
                objects = _s3(s3).list_objects_v2(Bucket=s3.s3.bucket_checkpoints, Prefix=key).get("Contents", [])
                if objects:
                    leases[name] = _s3(s3).get_object(Bucket=s3.s3.bucket_checkpoints, Key=key)["Body"].read()
            time.sleep(1)
        assert len(runs) == 2 and len(set(runs.values())) == 2, (runs, [jobs_api.get_job_logs(j)[-2000:] for j in jobs])
        assert len(leases) == 2 and leases[names[0]] != leases[names[1]], leases

        started = time.monotonic()
        refused = CliRunner().invoke(main, ["train", "smoke", "--resume", names[0],
                                            *(a for s in sets for a in ("--set", s))])
        assert refused.exit_code != 0 and "is being written by another job" in refused.output, refused.output
        print(f"\ntwo submissions in one second: runs {names}; a resume of a live run refused in "
              f"{time.monotonic() - started:.0f} s")
    finally:
        for job in jobs:
            jobs_api.stop_job(job)
        deadline = time.monotonic() + 60  # their workers free the head's CPUs before the next test
        while time.monotonic() < deadline and any(
                str(jobs_api.get_job_status(job).value) not in {"SUCCEEDED", "FAILED", "STOPPED"} for job in jobs):
            time.sleep(1)


def _s3(config):
    import boto3

    return boto3.client("s3", endpoint_url=config.s3_endpoint, aws_access_key_id=config.s3.access_key,
                        aws_secret_access_key=config.s3.secret_key, region_name=config.s3.region)
