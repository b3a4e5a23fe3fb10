"""The platform on a multi-node Ray cluster, started here with Ray's own `ray.cluster_utils.Cluster`.

The cluster is shaped like the KubeRay one of k8s/: a head with 0 CPUs (the Jobs API, the driver)
and worker nodes of 1 CPU added and removed by the test. Its nodes take S3 credentials and the
MLflow address from their environment, as pods take them from a Secret and a ConfigMap; the job
carries neither. Nodes on one machine share its disk, so `isrn submit` runs from a temporary
folder deleted right after submitting: the workers can get data, spec and checkpoints only
through S3, the job's working_dir and MLflow.

One smoke job proves four things in one run (the CI budget has room for one):
1. submitted while the cluster has a single worker node (the job needs two), it waits for the
   cluster and starts when a node is added (`scaling.resources_timeout_s`, jobs/cluster.py);
2. every training worker runs on a worker node;
3. node loss: once a checkpoint is complete in S3, the node of a worker is removed and a fresh
   node added; the run resumes from that checkpoint on the new node;
4. driver loss (a lost head pod, a killed submitter): once a newer checkpoint is complete, the
   job's driver is killed; the same entrypoint submitted again with the same run name (what a
   retried RayJob does) takes over the dead driver's writer lease once it expires, resumes from
   that checkpoint in the same MLflow run, and finishes with every epoch logged once.
Then the secret scan: the S3 secret appears in no checkpoint-bucket object, no Ray job's info or
logs, no MLflow run's params, tags or artifacts, after this job and a Tune study.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ISRN = [sys.executable, "-m", "jobs.cli"]
EPOCHS, STEPS_PER_EPOCH = 3, 6   # smoke: 48 train images, batch 4, 2 workers
LEASE_TIMEOUT_S = 20  # a dead driver's run is taken over 20 s after its last renewal (default 120 s)


def _own_disk() -> str:
    """A temp dir of a node's own, as a node of a real cluster has its own disk: nodes sharing Ray's
    session folder would delete each other's files when one is removed (the driver's working_dir).
    Short: Ray's unix sockets live under it (107-byte limit)."""
    return tempfile.mkdtemp(prefix="isrn-mn-", dir="/tmp")


def add_worker_node(cluster):
    return cluster.add_node(num_cpus=1, temp_dir=_own_disk())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(local_platform):
    """A head of 0 CPUs with a dashboard and one 1-CPU worker node; the node environment is the
    platform's S3 and MLflow (what a Kubernetes Secret and ConfigMap give pods)."""
    from ray.cluster_utils import Cluster

    from jobs.ray_auth import use_token_auth

    node_env = {**local_platform.config.service_env(), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {name: os.environ.get(name) for name in [*node_env, "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"]}
    os.environ.update(node_env)
    use_token_auth({})  # this process too: the cluster's nodes run without tokens
    os.environ.pop("RAY_ADDRESS", None)  # the head must not inherit the local platform's address
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    dashboard_port = _free_port()
    started = time.monotonic()
    # The head keeps Ray's default temp dir: the Jobs API hands its drivers RAY_ADDRESS=auto, which Ray
    # resolves through /tmp/ray/ray_current_cluster, the cluster last started with that dir (this one:
    # the local platform's head has a dir of its own).
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port})
    os.environ["RAY_ADDRESS"] = cluster.address  # the worker nodes' processes: this cluster, not the platform's
    first = add_worker_node(cluster)
    cluster.wait_for_nodes()
    try:
        yield {"cluster": cluster, "dashboard": f"http://127.0.0.1:{dashboard_port}", "nodes": [first],
               "start_s": time.monotonic() - started}
    finally:
        cluster.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _job_client(address: str):
    from jobs.submission import jobs_client

    return jobs_client(address)


def _wait(what: str, predicate, timeout_s: float, poll_s: float = 1.0, explain=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{explain()}")


@pytest.fixture(scope="module")
def multinode_run(cluster, local_platform, local_s3, smoke_shards):
    """The smoke job through the Jobs API on the cluster: waits for a node, trains, loses a node, resumes."""
    from mlflow.tracking import MlflowClient
    from ray.util.state import list_actors, list_nodes

    from jobs.submission import _only

    dashboard, ray_cluster = cluster["dashboard"], cluster["cluster"]
    client = _job_client(dashboard)
    mlflow = MlflowClient(local_platform.config.tracking_uri)
    env = {**os.environ, "MLFLOW_TRACKING_URI": local_platform.config.tracking_uri}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_ADDRESS"):
        env.pop(name, None)  # the submitting shell holds no credential and points at no cluster
    started = time.monotonic()

    def submit(submission_id: str, *run_name: str) -> str:
        """`isrn submit` of the smoke job from a folder deleted right after (the driver's folder: gone as
        soon as the job is submitted); returns the run's name."""
        folder = Path(tempfile.mkdtemp(prefix="isrn-multinode-driver-"))
        submitted = subprocess.run(
            [*ISRN, "submit", "smoke", "--address", dashboard, "--python", sys.executable, "--no-wait",
             "--submission-id", submission_id, *run_name, "--set", "data.synth=null",
             "--set", "data.shards=s3://isrn-shards/test-smoke", "--set", f"train.epochs={EPOCHS}",
             "--set", "scaling.resources_timeout_s=300", "--set", "scaling.max_failures=2",
             "--set", f"checkpoint.lease_timeout_s={LEASE_TIMEOUT_S}"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(folder)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "a remote cluster" in submitted.stdout, submitted.stdout  # not mistaken for the local platform
        return submitted.stdout.split(": run ", 1)[1].split()[0]

    job_id = "isrn-multinode-smoke"
    submitted_name = submit(job_id)

    # 1. It waits for the cluster: one node of 1 CPU cannot hold two 1-CPU workers.
    def job_state() -> str:
        return f"job {client.get_job_status(job_id)}:\n{client.get_job_logs(job_id)[-4000:]}"

    _wait("the job to wait for nodes", lambda: "waiting for nodes to be added" in client.get_job_logs(job_id), 300,
          explain=job_state)
    assert str(client.get_job_status(job_id).value) == "RUNNING"
    waited_at = time.monotonic()
    cluster["nodes"].append(add_worker_node(ray_cluster))

    # 2. Training starts, every worker on a worker node.
    def workers():
        with _only(dashboard):
            return list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker"),
                                                            ("state", "=", "ALIVE")], detail=True)
    alive = _wait("two training workers", lambda: (w := workers()) and len(w) == 2 and w, 240)
    with _only(dashboard):
        head = [n.node_id for n in list_nodes(address=dashboard, detail=True) if n.is_head_node]
    assert not {w.node_id for w in alive} & set(head)
    run = _wait("the MLflow run", lambda: mlflow.search_runs(
        [mlflow.get_experiment_by_name("isrn-smoke").experiment_id],
        f"tags.`ray.submission_id` = '{job_id}'"), 120)[0]
    run_name = run.data.tags["isrn.ray_run_name"]
    assert run_name == submitted_name  # named at submission: the user knows it before the job starts

    # 3. Node loss once a checkpoint is complete in S3: remove the node of a worker, add a fresh one.
    def complete_checkpoints():
        keys = [o["Key"] for o in local_s3.client().list_objects_v2(
            Bucket="isrn-checkpoints", Prefix=f"runs/{run_name}/").get("Contents", [])]
        return sorted(k.split("/")[2] for k in keys if k.endswith("/COMPLETE.json"))
    complete = _wait("a complete checkpoint in S3", complete_checkpoints, 300, poll_s=0.5)
    victim_id = alive[-1].node_id
    (victim,) = [n for n in cluster["nodes"] if n.node_id == victim_id]
    lost_at = time.monotonic()
    ray_cluster.remove_node(victim, allow_graceful=False)
    cluster["nodes"].remove(victim)
    cluster["nodes"].append(add_worker_node(ray_cluster))

    def job_end(submission_id: str) -> str:
        return _wait(f"job {submission_id} to end", lambda: (s := str(client.get_job_status(submission_id).value))
                     in ("SUCCEEDED", "FAILED", "STOPPED") and s, 900, poll_s=2)

    # 4. Driver loss once a checkpoint newer than those of the node loss is complete.
    newer = _wait("a newer complete checkpoint", lambda: [c for c in complete_checkpoints() if c not in complete],
                  600, poll_s=0.5, explain=lambda: f"complete: {complete_checkpoints()}; job "
                  f"{client.get_job_status(job_id)}:\n{client.get_job_logs(job_id)[-6000:]}")
    (driver,) = _wait("the job's driver", lambda: [p for p in psutil.process_iter(["cmdline"])
                                                  if "jobs.cli" in (p.info["cmdline"] or [])
                                                  and run_name in (p.info["cmdline"] or [])], 30)
    driver.kill()
    driver_lost_at = time.monotonic()
    assert job_end(job_id) == "FAILED"
    retry_id = "isrn-multinode-smoke-retry"
    assert submit(retry_id, "--run-name", run_name) == run_name  # the same entrypoint, as a retried RayJob runs it
    status = job_end(retry_id)
    finished = time.monotonic()
    logs = client.get_job_logs(retry_id)
    assert status == "SUCCEEDED", logs[-6000:]
    assert "taking over the lease" in logs, logs[-6000:]
    return {"job_id": job_id, "run_id": run.info.run_id, "run_name": run_name, "logs": logs,
            "first_complete": complete[0], "complete_at_driver_loss": newer[-1], "victim": victim_id,
            "wall_s": finished - started, "after_node_loss_s": driver_lost_at - lost_at,
            "after_driver_loss_s": finished - driver_lost_at, "waited_s": waited_at - started, "mlflow": mlflow,
            "client": client}


def test_a_job_waits_for_the_cluster_and_survives_a_node_loss(multinode_run):
    mlflow, run_id = multinode_run["mlflow"], multinode_run["run_id"]
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    # One MLflow run for the whole job, with the resume in it.
    experiment = mlflow.get_experiment_by_name("isrn-smoke").experiment_id
    assert len(mlflow.search_runs([experiment], f"tags.`ray.submission_id` = '{multinode_run['job_id']}'")) == 1
    assert len(mlflow.search_runs([experiment], f"tags.`isrn.ray_run_name` = '{multinode_run['run_name']}'")) == 1
    resumed = [int(m.value) for m in sorted(mlflow.get_metric_history(run_id, "resumed_from_step"),
                                            key=lambda m: m.timestamp)]
    first_step = int(multinode_run["first_complete"].removeprefix("step_"))
    at_driver_loss = int(multinode_run["complete_at_driver_loss"].removeprefix("step_"))
    # Once after the node loss, once after the driver loss, each from a checkpoint complete by then.
    assert len(resumed) == 2 and resumed[0] >= first_step and resumed[1] >= at_driver_loss, (
        resumed, multinode_run["first_complete"], multinode_run["complete_at_driver_loss"])
    # No epoch lost, none logged twice: every epoch's end was logged once, and every step once.
    epochs = sorted(int(m.value) for m in mlflow.get_metric_history(run_id, "epoch"))
    assert epochs == list(range(1, EPOCHS + 1))
    steps = sorted(m.step for m in mlflow.get_metric_history(run_id, "loss_cls_1"))
    assert steps == sorted(set(steps)) and max(steps) == EPOCHS * STEPS_PER_EPOCH
    assert run.data.tags["isrn.world_size"] == "2" and run.data.tags.get("isrn.model_uri", "").startswith("models:/")
    print(f"\nmulti-node smoke: {multinode_run['wall_s']:.0f} s wall (waited {multinode_run['waited_s']:.0f} s for "
          f"a node), resumed from step {resumed[0]} after losing node {multinode_run['victim'][:8]}, from step "
          f"{resumed[1]} after losing the driver ({multinode_run['after_node_loss_s']:.0f} s from the node loss to "
          f"the driver loss, {multinode_run['after_driver_loss_s']:.0f} s from the driver loss to the end)")


def test_no_secret_leaves_where_it_is_configured(multinode_run, local_platform, local_s3, tune_study):
    """The S3 secret's value in none of: the checkpoint bucket's objects, the Ray jobs' info and logs,
    the MLflow runs' params, tags and artifacts (a smoke job on the cluster and a Tune study)."""
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    secret = local_platform.config.s3.secret_key.encode()
    counts = {"checkpoint objects": 0, "ray jobs": 0, "mlflow runs": 0, "mlflow artifacts": 0}
    s3 = local_s3.client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="isrn-checkpoints"):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket="isrn-checkpoints", Key=obj["Key"])["Body"].read()
            assert secret not in body, obj["Key"]
            counts["checkpoint objects"] += 1
    from jobs.ray_auth import auth_env_for, use_token_auth

    cluster_client = multinode_run["client"]  # made for the cluster, which takes no token
    use_token_auth(auth_env_for(local_platform.config.ray_token_path, {}))
    platform_client = JobSubmissionClient(local_platform.config.ray_dashboard_url)
    for client in (cluster_client, platform_client):
        for job in client.list_jobs():
            job_id = job.submission_id or job.job_id
            assert secret.decode() not in repr(client.get_job_info(job_id)), job_id
            assert secret.decode() not in client.get_job_logs(job_id), job_id
            counts["ray jobs"] += 1
    mlflow = MlflowClient(local_platform.config.tracking_uri)
    with tempfile.TemporaryDirectory() as directory:
        for experiment in mlflow.search_experiments():
            for run in mlflow.search_runs([experiment.experiment_id], max_results=1000):
                assert secret.decode() not in repr(run.data.params) + repr(run.data.tags), run.info.run_id
                counts["mlflow runs"] += 1
                local = Path(mlflow.download_artifacts(run.info.run_id, "", Path(directory) / run.info.run_id))
                for file in (p for p in local.rglob("*") if p.is_file()):
                    assert secret not in file.read_bytes(), file
                    counts["mlflow artifacts"] += 1
    assert tune_study["name"] and counts["ray jobs"] >= 1 and counts["checkpoint objects"] > 0
    print(f"\nsecret scan: {counts}")
