"""What the benches share: this checkout's code everywhere, a private local platform, ratio summaries.

    from harness import private_platform, summarise   # bench/ is on sys.path when a bench runs
    with private_platform(("s3", "ray")) as platform:  # SeaweedFS and a Ray head on free ports
        ...

Importing this module puts the repository root first on `sys.path` and on `PYTHONPATH`, so the
bench process, the services it starts (the Ray head, hence every Ray worker) and `torchrun`'s
workers all run this checkout's `jobs` and `data_shards`, not an installed copy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 whose +10000 (SeaweedFS's and Ray's gRPC) is a port too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536 and port not in ports:
            ports.append(port)
    return ports


@contextlib.contextmanager
def private_platform(services: Sequence[str] = ("s3",)) -> Iterator["Platform"]:  # noqa: F821
    """The local platform's `services` on free ports with a temporary state folder, stopped on exit.

    Its S3 holds the platform's buckets; its addresses and credentials are put into this process's
    environment (`PlatformConfig.client_env`), where boto3, pyarrow, MLflow, Ray and `torchrun`
    children find them. A platform the user runs (`isrn platform up`) is left alone.
    """
    from jobs.local_platform import Platform, PlatformConfig
    from jobs.local_platform.config import MlflowConfig, RayConfig, S3Config

    with tempfile.TemporaryDirectory(prefix="isrn-bench-platform-") as state:
        p = free_ports(14)
        config = PlatformConfig(
            state_dir=Path(state),
            s3=S3Config(port=p[0], master_port=p[1], volume_port=p[2], filer_port=p[3], webdav_port=p[4],
                        admin_port=p[5]),
            mlflow=MlflowConfig(port=p[6]),
            ray=RayConfig(port=p[7], dashboard_port=p[8], client_server_port=p[9], dashboard_agent_port=p[10],
                          dashboard_agent_grpc_port=p[11], metrics_export_port=p[12], runtime_env_agent_port=p[13]),
        )
        platform = Platform(config)
        os.environ.update(config.client_env())
        try:
            platform.up(only=tuple(services))
            yield platform
        finally:
            if "ray" in services:
                import ray

                ray.shutdown()
            platform.down(only=tuple(services))


def s3_settings(platform: "Platform") -> "S3Settings":  # noqa: F821
    from data_shards.storage import S3Settings

    c = platform.config
    return S3Settings(endpoint_url=c.s3_endpoint, access_key=c.s3.access_key, secret_key=c.s3.secret_key,
                      region=c.s3.region)


def summarise(ratios: Sequence[float], target: float | None = None) -> str:
    """'median 1.023 (min 0.981, max 1.064 over 5)' and what the spread says about 1.0 or `target`."""
    median, low, high = statistics.median(ratios), min(ratios), max(ratios)
    text = f"median {median:.3f} (min {low:.3f}, max {high:.3f} over {len(ratios)})"
    if len(ratios) < 2:
        return text + ": one pair, no spread"
    if low <= 1.0 <= high:
        text += ": the spread covers 1.0, no difference resolved"
    if target is not None:
        text += f"; target >= {target:.2f}: " + ("met" if low >= target else "met by the median only"
                                                if median >= target else "not met")
    return text
