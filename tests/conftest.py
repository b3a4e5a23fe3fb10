"""Shared fixtures: the real local platform (SeaweedFS, MLflow, Ray) in a temporary state directory.

Services start lazily: a test that asks for `local_s3` starts SeaweedFS only; `local_platform`
adds MLflow and the Ray head. Every port is a free one chosen for this session, so the tests never
collide with a platform a developer has running.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.local_platform import Platform, PlatformConfig
from jobs.local_platform.config import MlflowConfig, RayConfig, S3Config

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("ISRN_SHARED_DIR", REPO_ROOT.parent / "shared"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fault campaign (tests/jobs/test_fault_campaign.py) runs only when asked: `-m campaign`."""
    if "campaign" in (config.getoption("markexpr") or ""):
        return
    campaign = [item for item in items if item.get_closest_marker("campaign")]
    if campaign:
        config.hook.pytest_deselected(items=campaign)
        items[:] = [item for item in items if not item.get_closest_marker("campaign")]


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 whose +10000 neighbour is free too.

    SeaweedFS opens a gRPC port at HTTP port + 10000, so both must be free.
    """
    ports: list[int] = []
    sockets = []
    while len(ports) < count:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if port + 10000 < 65536 and port not in ports:
            probe = socket.socket()
            try:
                probe.bind(("127.0.0.1", port + 10000))
                ports.append(port)
            except OSError:
                pass
            finally:
                probe.close()
        sockets.append(sock)
    for sock in sockets:
        sock.close()
    return ports


TEST_S3_SECRET = f"isrn-test-secret-{uuid.uuid4().hex}"
"""The session's S3 secret: distinctive, so the secret scan (tests/jobs/test_multinode.py) finds any copy."""


def platform_config_on_free_ports(state_dir: Path) -> PlatformConfig:
    p = free_ports(14)
    return PlatformConfig(
        state_dir=state_dir,
        s3=S3Config(port=p[0], master_port=p[1], volume_port=p[2], filer_port=p[3], webdav_port=p[4],
                    admin_port=p[5], secret_key=TEST_S3_SECRET),
        mlflow=MlflowConfig(port=p[6]),
        ray=RayConfig(port=p[7], dashboard_port=p[8], client_server_port=p[9], dashboard_agent_port=p[10],
                      dashboard_agent_grpc_port=p[11], metrics_export_port=p[12],
                      runtime_env_agent_port=p[13]),
    )


@dataclasses.dataclass
class S3Endpoint:
    """A running S3 server and the credentials it enforces."""

    platform: Platform

    @property
    def endpoint_url(self) -> str:
        return self.platform.config.s3_endpoint

    @property
    def access_key(self) -> str:
        return self.platform.config.s3.access_key

    @property
    def secret_key(self) -> str:
        return self.platform.config.s3.secret_key

    @property
    def region(self) -> str:
        return self.platform.config.s3.region

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region)

    def stop(self) -> None:
        self.platform.down(only=("s3",))

    def start(self) -> None:
        self.platform.up(only=("s3",))


def start_seaweedfs(state_dir: Path) -> S3Endpoint:
    """A SeaweedFS of its own (for tests that stop the server); the caller calls `.stop()`."""
    platform = Platform(platform_config_on_free_ports(Path(state_dir)))
    platform.up(only=("s3",))
    return S3Endpoint(platform)


@pytest.fixture(scope="session")
def _session_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    platform = Platform(platform_config_on_free_ports(tmp_path_factory.mktemp("platform")))
    yield platform
    platform.down(purge=True)


@pytest.fixture(scope="session")
def local_s3(_session_platform: Platform) -> S3Endpoint:
    """The session's real SeaweedFS S3 (started on first use)."""
    _session_platform.up(only=("s3",))
    return S3Endpoint(_session_platform)


@pytest.fixture(scope="session")
def local_platform(_session_platform: Platform) -> Platform:
    """The session's full platform: S3, MLflow and the Ray head (started on first use)."""
    _session_platform.up()
    return _session_platform


@pytest.fixture
def s3_env(local_s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """The AWS_* variables of the local S3 set in this test's environment."""
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    return local_s3


@pytest.fixture
def platform_env(local_platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Platform:
    """Every client variable of the local platform (S3, MLflow, Ray) set in this test's environment."""
    from jobs.ray_auth import use_token_auth

    for name, value in local_platform.config.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ISRN_STATE_DIR", str(local_platform.state))
    use_token_auth({})  # Ray caches the authentication mode per process: read the variables again
    return local_platform


@pytest.fixture
def fresh_bucket(local_s3: S3Endpoint) -> str:
    """A new, empty bucket in the local S3."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    local_s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def smoke_shards(local_platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`--set` overrides that put the smoke spec on this session's platform, its data generated and
    sharded once into s3://isrn-shards/test-smoke (the shards outlive the generated folder)."""
    from jobs.environment import JobEnvironment
    from jobs.data_prep import prepare_data
    from jobs.spec import load_spec

    root = tmp_path_factory.mktemp("smoke-data")
    overrides = [f"data.synth.root={root}", "data.shards=s3://isrn-shards/test-smoke"]
    prepare_data(load_spec("smoke", overrides), JobEnvironment.resolve(local_platform.config.client_env()))
    return overrides


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the checkout (the real WIDER FACE val ground truth lives there)."""
    if not SHARED_DIR.is_dir():
        pytest.fail(f"{SHARED_DIR} not found: the tests need ../shared beside the checkout "
                    "(or ISRN_SHARED_DIR pointing at it)")
    return SHARED_DIR
