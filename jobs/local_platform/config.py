"""Typed configuration of the local platform: defaults in code, a YAML file and variables override.

The defaults below are the platform; nothing needs a file, so an installed package (`pip install .`,
the container image) runs from any folder. `ISRN_PLATFORM_CONFIG=FILE` names a YAML file of
overrides (`platform/local.yaml` in the repository documents every field), and a variable
`ISRN_<SECTION>_<FIELD>` (`ISRN_MLFLOW_PORT=5001`), or `ISRN_<FIELD>` for the top-level fields
(`ISRN_STATE_DIR`), overrides both: each variable is the override `section.field=VALUE` of the one
override syntax (`jobs/overrides.py`, as `--set` on a spec), its value read as YAML. Unknown keys
are rejected by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from isrn_model.section import Section, config_section, section_fields
from jobs.errors import ConfigError
from jobs.overrides import apply_overrides


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/isrn` (`~/.local/state/isrn`): the same wherever a command runs from."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "isrn"


@config_section
class S3Config(Section):
    port: int = 8333
    """The S3 API. SeaweedFS moves to the next port when one is busy, so every port it opens is
    pinned and checked before start (docs/platform-notes.md)."""
    master_port: int = 9333
    volume_port: int = 8080
    filer_port: int = 8888
    webdav_port: int = 7333
    admin_port: int = 23646
    access_key: str = "isrn-local"
    """Development credentials of the local store. SeaweedFS enforces them: without credentials
    pyarrow's multipart uploads fail silently and Ray loses checkpoints."""
    secret_key: str = Field(default="isrn-local-secret", repr=False)
    region: str = "us-east-1"
    bucket_shards: str = "isrn-shards"
    bucket_checkpoints: str = "isrn-checkpoints"
    bucket_mlflow: str = "isrn-mlflow"

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.bucket_shards, self.bucket_checkpoints, self.bucket_mlflow)


@config_section
class MlflowConfig(Section):
    port: int = 5000
    workers: int = 1
    """Uvicorn workers of the tracking server; one is plenty on a 2-core machine."""


@config_section
class RayConfig(Section):
    port: int = 6379
    dashboard_port: int = 8265
    client_server_port: int = 10001
    dashboard_agent_port: int = 52365
    dashboard_agent_grpc_port: int = 52366
    metrics_export_port: int = 8090
    runtime_env_agent_port: int = 52367
    num_cpus: int | None = None
    """CPUs the head offers to Train workers; None: all cores of the machine."""
    auth_mode: Literal["disabled", "token"] = "token"
    """Ray's token authentication. Its GCS, raylets and Ray Client server listen beyond loopback, so
    without a token anyone who reaches this machine could run code on it; the token is made by
    `isrn platform up` and kept in the state directory (jobs/ray_auth.py)."""
    pass_env: tuple[str, ...] = ()
    """Variables of the shell running `isrn platform up` that the head, and so every job and worker
    it starts, also gets (e.g. [CUDA_VISIBLE_DEVICES, HTTPS_PROXY]). Nothing else from that shell
    reaches a job: the head starts with the platform's own settings and what a process needs to run
    (PATH, HOME, locale, the state directory's variables), so a token, a proxy or a test's fault
    plan exported there stays there."""


@config_section
class PlatformConfig(Section):
    state_dir: Path | None = None
    """Data, logs and pid files of the services; None: `$XDG_STATE_HOME/isrn` (~/.local/state/isrn)."""
    host: str = "127.0.0.1"
    s3: S3Config = S3Config()
    mlflow: MlflowConfig = MlflowConfig()
    ray: RayConfig = RayConfig()

    @property
    def state_path(self) -> Path:
        return (self.state_dir.expanduser() if self.state_dir else default_state_dir()).absolute()

    @property
    def ray_token_path(self) -> Path:
        """The local head's Ray auth token (owner-only), made by `isrn platform up`."""
        return self.state_path / "ray-auth-token"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3.port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow.port}"

    @property
    def ray_dashboard_url(self) -> str:
        return f"http://{self.host}:{self.ray.dashboard_port}"

    @property
    def ray_gcs_address(self) -> str:
        return f"{self.host}:{self.ray.port}"

    def service_env(self) -> dict[str, str]:
        """What the Ray head (and so every worker it starts) holds in its environment: the S3
        credentials and the MLflow address live here, on the machine, and never travel with a job."""
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            "AWS_DEFAULT_REGION": self.s3.region,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            # Train's placement-group cleaner calls ray.init() and refuses to guess when several
            # Ray instances run on the machine.
            "RAY_ADDRESS": self.ray_gcs_address,
        }

    def client_env(self) -> dict[str, str]:
        """Environment variables that point boto3, pyarrow, MLflow and Ray clients at this platform:
        the head's own (ray.init() takes the GCS address), the Jobs API's HTTP address and the token."""
        return {
            **self.service_env(),
            "RAY_API_SERVER_ADDRESS": self.ray_dashboard_url,
            "RAY_AUTH_MODE": self.ray.auth_mode,
            **({"RAY_AUTH_TOKEN_PATH": str(self.ray_token_path)} if self.ray.auth_mode == "token" else {}),
            "ISRN_SHARDS_BUCKET": self.s3.bucket_shards,
            "ISRN_CHECKPOINTS_BUCKET": self.s3.bucket_checkpoints,
            "ISRN_MLFLOW_BUCKET": self.s3.bucket_mlflow,
        }


def setting_variables() -> dict[str, str]:
    """Every `ISRN_<SECTION>_<FIELD>` / `ISRN_<FIELD>` variable of the configuration -> its dotted field."""
    found = {}
    for name, field in section_fields(PlatformConfig).items():
        subfields = section_fields(field.annotation)
        for path in ([f"{name}.{sub}" for sub in subfields] if subfields else [name]):
            found["ISRN_" + path.replace(".", "_").upper()] = path
    return found


def env_overrides(environ: dict[str, str]) -> list[str]:
    """The `section.field=VALUE` overrides the `ISRN_<SECTION>_<FIELD>` / `ISRN_<FIELD>` variables make."""
    return [f"{path}={environ[variable]}" for variable, path in setting_variables().items() if variable in environ]


def load_platform_config(path: Path | None = None, environ: dict[str, str] | None = None) -> PlatformConfig:
    """The defaults, overridden by the file `path` or ISRN_PLATFORM_CONFIG (if any), then by variables."""
    environ = dict(os.environ if environ is None else environ)
    source = path or environ.get("ISRN_PLATFORM_CONFIG")
    raw: Any = {}
    if source:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"platform config {path} (ISRN_PLATFORM_CONFIG) not found: give a YAML file, "
                              "or unset it to use the defaults")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    where = f"{path}" if source else "platform defaults"
    try:
        return PlatformConfig.from_dict(apply_overrides(raw, env_overrides(environ), flag="ISRN_<SECTION>_<FIELD>"),
                                        owner="")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error} (environment overrides: ISRN_<SECTION>_<FIELD>=VALUE, read as YAML)"
                          ) from None
