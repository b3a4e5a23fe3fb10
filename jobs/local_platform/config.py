"""Typed configuration of the local platform, from `platform/local.yaml` plus environment overrides.

An override is `ISRN_<SECTION>_<FIELD>` (`ISRN_MLFLOW_PORT=5001`), or `ISRN_<FIELD>` for the
top-level fields (`ISRN_STATE_DIR`). Unknown keys in the file are rejected by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = REPO_ROOT / "platform" / "local.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Config(_Section):
    port: int = 8333
    master_port: int = 9333
    volume_port: int = 8080
    filer_port: int = 8888
    webdav_port: int = 7333
    admin_port: int = 23646
    access_key: str = "isrn-local"
    secret_key: str = "isrn-local-secret"
    region: str = "us-east-1"
    bucket_shards: str = "isrn-shards"
    bucket_checkpoints: str = "isrn-checkpoints"
    bucket_mlflow: str = "isrn-mlflow"

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.bucket_shards, self.bucket_checkpoints, self.bucket_mlflow)


class MlflowConfig(_Section):
    port: int = 5000
    workers: int = 1


class RayConfig(_Section):
    port: int = 6379
    dashboard_port: int = 8265
    client_server_port: int = 10001
    dashboard_agent_port: int = 52365
    dashboard_agent_grpc_port: int = 52366
    metrics_export_port: int = 8090
    runtime_env_agent_port: int = 52367
    num_cpus: int | None = None
    auth_mode: Literal["disabled", "token"] = "disabled"


class PlatformConfig(_Section):
    state_dir: Path = Path(".state")
    host: str = "127.0.0.1"
    s3: S3Config = S3Config()
    mlflow: MlflowConfig = MlflowConfig()
    ray: RayConfig = RayConfig()

    @property
    def state_path(self) -> Path:
        path = self.state_dir.expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3.port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow.port}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://{self.host}:{self.ray.dashboard_port}"

    @property
    def ray_gcs_address(self) -> str:
        return f"{self.host}:{self.ray.port}"

    def client_env(self) -> dict[str, str]:
        """Environment variables that point boto3, pyarrow, MLflow and Ray clients at this platform."""
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_DEFAULT_REGION": self.s3.region,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            # ray.init() takes the GCS address; the Jobs API (`ray job`, `isrn submit`) the HTTP one.
            "RAY_ADDRESS": self.ray_gcs_address,
            "RAY_API_SERVER_ADDRESS": self.ray_dashboard_url,
            "RAY_AUTH_MODE": self.ray.auth_mode,
            "ISRN_SHARDS_BUCKET": self.s3.bucket_shards,
            "ISRN_CHECKPOINTS_BUCKET": self.s3.bucket_checkpoints,
            "ISRN_MLFLOW_BUCKET": self.s3.bucket_mlflow,
        }


def _apply_env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    merged = {key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()}
    for name, field in PlatformConfig.model_fields.items():
        section_type = field.annotation
        if isinstance(section_type, type) and issubclass(section_type, _Section):
            for sub in section_type.model_fields:
                env_name = f"ISRN_{name}_{sub}".upper()
                if env_name in environ:
                    merged.setdefault(name, {})[sub] = environ[env_name]
        else:
            env_name = f"ISRN_{name}".upper()
            if env_name in environ:
                merged[name] = environ[env_name]
    return merged


def load_platform_config(path: Path | None = None, environ: dict[str, str] | None = None) -> PlatformConfig:
    """Read the platform file (ISRN_PLATFORM_CONFIG or platform/local.yaml) and apply overrides."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path or environ.get("ISRN_PLATFORM_CONFIG") or DEFAULT_CONFIG_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"platform config {path} not found; set ISRN_PLATFORM_CONFIG to a YAML file")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return PlatformConfig.model_validate(_apply_env_overrides(raw, environ))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ValueError(f"{path}: {problems} (environment overrides: ISRN_<SECTION>_<FIELD>)") from None
