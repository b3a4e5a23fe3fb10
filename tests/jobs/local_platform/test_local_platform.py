"""The local platform against its real services: SeaweedFS, the MLflow server and the Ray head."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import ClientError

from jobs.local_platform import Platform, PlatformError
from jobs.local_platform.config import load_platform_config

pytestmark = pytest.mark.integration


def test_object_round_trip_through_local_s3(local_s3, fresh_bucket):
    client = local_s3.client()
    payload = uuid.uuid4().bytes * 1000
    client.put_object(Bucket=fresh_bucket, Key="a/b.bin", Body=payload)
    assert client.get_object(Bucket=fresh_bucket, Key="a/b.bin")["Body"].read() == payload


def test_platform_buckets_exist(local_s3):
    names = {b["Name"] for b in local_s3.client().list_buckets()["Buckets"]}
    assert set(local_s3.platform.config.s3.buckets) <= names


def test_wrong_credentials_are_refused(local_s3):
    import boto3

    client = boto3.client("s3", endpoint_url=local_s3.endpoint_url, aws_access_key_id=local_s3.access_key,
                          aws_secret_access_key="not-the-secret", region_name=local_s3.region)
    with pytest.raises(ClientError) as error:
        client.list_buckets()
    assert error.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}


def test_mlflow_artifact_lands_in_the_s3_bucket(platform_env, local_s3):
    import mlflow

    mlflow.set_tracking_uri(platform_env.config.tracking_uri)
    mlflow.set_experiment("platform-test")
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
        mlflow.log_text("hello from the platform test", "notes/hello.txt")
    keys = [
        obj["Key"]
        for obj in local_s3.client().list_objects_v2(
            Bucket=platform_env.config.s3.bucket_mlflow, Prefix="artifacts/"
        ).get("Contents", [])
    ]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for key in keys), keys
    # The client needed no S3 credentials: the server proxies artifacts (mlflow-artifacts:/).
    assert mlflow.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")


def test_mlflow_server_runs_no_job_consumers(local_platform):
    """MLflow 3's server jobs (GenAI scorers; unused here) are off: no job runner, no Huey consumer
    taking memory and CPU beside the server's own workers."""
    pid = int((local_platform.run_dir / "mlflow.pid").read_text())
    tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    commands = [" ".join(p.cmdline()) for p in tree]
    assert not [c for c in commands if "huey" in c or "jobs._job_runner" in c], commands
    assert len(tree) <= 1 + local_platform.config.mlflow.workers, commands


def test_ray_job_through_the_jobs_api_finishes_and_sees_nothing_of_the_starting_shell(platform_env):
    """A job and its tasks run; the variable the shell exported before `isrn platform up`
    (tests/jobs/conftest.py) reaches neither its driver nor its workers, the platform's own do."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.jobs.conftest import SHELL_CANARY

    assert os.environ[SHELL_CANARY]  # the shell that started the platform had it
    client = JobSubmissionClient(platform_env.config.ray_dashboard_url)
    probe = textwrap.dedent(f"""
        import os, ray
        ray.init()
        seen = lambda: (os.environ.get({SHELL_CANARY!r}), os.environ.get("MLFLOW_TRACKING_URI"))
        print("sum", ray.get(ray.remote(lambda: 40 + 2).remote()))
        print("driver", *seen())
        print("task", *ray.get(ray.remote(seen).remote()))
    """)
    # The entrypoint runs in a shell on the head: name the interpreter (docs/platform-notes.md).
    job_id = client.submit_job(entrypoint=f"{sys.executable} -c {shlex.quote(probe)}")
    deadline = time.monotonic() + 120
    while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs
    assert "sum 42" in logs
    uri = platform_env.config.tracking_uri
    assert f"driver None {uri}" in logs and f"task None {uri}" in logs, logs


def test_a_service_starts_with_an_explicit_environment():
    from jobs.local_platform.services import service_environment

    shell = {"PATH": "/usr/bin", "HOME": "/home/u", "LC_ALL": "C.UTF-8", "ISRN_MLFLOW_PORT": "5001",
             "ISRN_FAULT_PLAN": "[]", "HF_TOKEN": "t", "HTTPS_PROXY": "http://proxy:3128", "CUDA_VISIBLE_DEVICES": "0"}
    own = {"AWS_ACCESS_KEY_ID": "isrn-local", "HOME": "/kept-from-own"}
    assert service_environment(own, (), shell) == {
        "PATH": "/usr/bin", "HOME": "/kept-from-own", "LC_ALL": "C.UTF-8", "ISRN_MLFLOW_PORT": "5001",
        "AWS_ACCESS_KEY_ID": "isrn-local"}
    passed = service_environment(own, ("HTTPS_PROXY", "CUDA_VISIBLE_DEVICES", "NOT_SET"), shell)
    assert passed["HTTPS_PROXY"] == "http://proxy:3128" and passed["CUDA_VISIBLE_DEVICES"] == "0"
    assert "NOT_SET" not in passed and "ISRN_FAULT_PLAN" not in passed and "HF_TOKEN" not in passed
    config = load_platform_config(environ={"ISRN_RAY_PASS_ENV": "[HTTPS_PROXY, CUDA_VISIBLE_DEVICES]"})
    assert config.ray.pass_env == ("HTTPS_PROXY", "CUDA_VISIBLE_DEVICES")


def test_port_held_by_another_process_gives_a_clear_error(tmp_path):
    from tests.conftest import platform_config_on_free_ports

    config = platform_config_on_free_ports(tmp_path / "state")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.s3.port))
        squatter.listen()
        with pytest.raises(PlatformError, match=rf"port {config.s3.port} \(s3\) on 127.0.0.1 is taken"):
            Platform(config).up()
    assert not list((tmp_path / "state" / "run").glob("*.pid"))


def test_a_stage_checks_all_its_ports_before_it_starts_anything(tmp_path):
    """MLflow and Ray start side by side after S3: Ray's busy port stops `up` before MLflow starts."""
    from tests.conftest import platform_config_on_free_ports

    config = platform_config_on_free_ports(tmp_path / "state")
    platform = Platform(config)
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", config.ray.port))
            squatter.listen()
            with pytest.raises(PlatformError, match=rf"port {config.ray.port} \(ray"):
                platform.up()
        assert platform.is_running("s3") and not platform.is_running("mlflow") and not platform.is_running("ray")
    finally:
        platform.down()


@pytest.mark.slow
def test_up_twice_is_harmless_and_down_leaves_no_process(tmp_path):
    from tests.conftest import platform_config_on_free_ports

    platform = Platform(platform_config_on_free_ports(tmp_path / "state"))
    try:
        first = platform.up()
        assert all(s.healthy for s in first), first
        second = platform.up()
        assert [s.pid for s in second] == [s.pid for s in first]
        sessions = [s.pid for s in first]
        assert all(any(True for p in psutil.process_iter() if _sid(p) == sid) for sid in sessions)
    finally:
        platform.down()
    assert not [p for p in psutil.process_iter() if _sid(p) in sessions]
    assert all(not s.running for s in platform.status())
    # The data stays for the next `up`.
    assert (tmp_path / "state" / "mlflow" / "mlflow.db").exists()


def _sid(process: psutil.Process) -> int | None:
    import os

    try:
        return os.getsid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_config_env_overrides_and_unknown_keys(tmp_path):
    config = load_platform_config(environ={"ISRN_MLFLOW_PORT": "5099", "ISRN_STATE_DIR": str(tmp_path)})
    assert config.mlflow.port == 5099 and config.state_path == tmp_path
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        s3:
          prot: 9000
    """))
    with pytest.raises(ValueError, match=r"s3\.prot"):
        load_platform_config(bad, environ={})
    with pytest.raises(ValueError, match=r"mlflow\.port"):
        load_platform_config(environ={"ISRN_MLFLOW_PORT": "five"})


# ---- no way in without a key -----------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _ray_grpc_methods() -> list[str]:
    """Every method of Ray's gRPC services (from its generated stubs). Token auth checks registered
    methods; an unknown one answers UNIMPLEMENTED either way."""
    import re
    from pathlib import Path

    import ray

    methods: set[str] = set()
    for stub in sorted((Path(ray.__file__).parent / "core" / "generated").glob("*_pb2_grpc.py")):
        methods.update(f"/{service}/{method}" for service, method in re.findall(r"'/([\w.]+)/(\w+)'", stub.read_text()))
    # The object manager's service ships no Python stub (ray/src/ray/protobuf/object_manager.proto).
    methods.update(f"/ray.rpc.ObjectManagerService/{m}" for m in ("Push", "Pull", "FreeObjects"))
    return sorted(methods)


def _stack_listeners(platform: Platform) -> list[tuple[str, str, int]]:
    """(service, bound address, port) of every listening socket of the stack's processes."""
    import os

    sessions = {platform._running_pid(name): name for name in ("s3", "mlflow", "ray")}
    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or not conn.pid:
            continue
        try:
            service = sessions.get(os.getsid(conn.pid))
        except (ProcessLookupError, PermissionError):
            continue
        if service:
            found.add((service, conn.laddr.ip, conn.laddr.port))
    return sorted(found)


def _answer_without_token(port: int) -> str:
    """How the server on 127.0.0.1:`port` answers a client without the token."""
    import grpc
    import requests

    try:
        response = requests.get(f"http://127.0.0.1:{port}/api/version", timeout=3)
        if response.status_code in (401, 403):
            return "refused"
        if response.headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"):
            return "metrics"  # Prometheus exposition: read-only numbers
        return f"answered HTTP {response.status_code}"
    except requests.RequestException:
        pass  # not HTTP
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method in _ray_grpc_methods():
            try:
                channel.unary_unary(method)(b"", timeout=5)
                return f"answered {method}"
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return "refused"
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    return f"answered {method}: {error.code().name}"
    return "no known method"


def test_nothing_beyond_loopback_lets_a_client_in_without_the_token(local_platform):
    """Every listening socket of the stack is bound to loopback, or refuses a client that has no
    token (tried on 127.0.0.1 only). Ray rewrites 127.0.0.1 to the machine's address for its GCS,
    raylets and Ray Client server, which is why the head runs with token authentication; its
    Prometheus endpoints (read-only numbers) are the one kind that answers."""
    token = local_platform.config.ray_token_path
    assert token.is_file() and oct(token.stat().st_mode & 0o777) == "0o600"
    ray = local_platform.config.ray
    listeners: set = set()
    for _ in range(10):  # a socket scan can miss one that a process opens meanwhile: take the union
        listeners |= set(_stack_listeners(local_platform))
        if {ray.port, ray.client_server_port} <= {port for _, _, port in listeners}:
            break
        time.sleep(2)
    listeners = sorted(listeners)
    exposed = [(service, address, port) for service, address, port in listeners if address not in LOOPBACK]
    assert {s for s, _, _ in listeners} == {"s3", "mlflow", "ray"} and exposed
    assert {s for s, _, _ in exposed} == {"ray"}, exposed  # SeaweedFS and MLflow: loopback only
    on_loopback = {port for _, address, port in listeners if address in LOOPBACK | {"0.0.0.0", "::"}}
    answers = {}
    for _, _, port in exposed:
        if port in on_loopback:  # the same server listens on loopback too (or on every interface)
            answers[port] = _answer_without_token(port)
        else:  # the machine's address alone: this workplace probes loopback only
            answers[port] = "bound to the machine's address only: not probed (loopback probes only)"
    wrong = {port: answer for port, answer in answers.items() if answer not in ("refused", "metrics")
             and not answer.startswith("bound to")}
    assert not wrong, answers
    # The GCS and the Ray Client server (code execution, both beyond loopback) refuse without a token.
    assert answers[ray.port] == answers[ray.client_server_port] == "refused", answers
    print(f"\nlistening sockets: {len(listeners)}, beyond loopback: {len(exposed)}: {answers}")
