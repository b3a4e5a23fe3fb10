"""Where a job's services are: the environment's S3, MLflow and Ray, or the running local platform's.

The standard variables win (AWS_*, MLFLOW_TRACKING_URI, RAY_ADDRESS, RAY_API_SERVER_ADDRESS). What
they leave unset falls back to the local platform (`isrn platform up`), whose defaults ship in the
package, so the same commands work from a checkout, an installed package and the container image:

- S3: with AWS_ENDPOINT_URL or static keys set, those; else, while the local platform's S3 runs, it;
  else the AWS default endpoint with the standard credential chain (IRSA, instance profiles, ~/.aws).
- MLflow, the Ray Jobs API: the variable, else the local platform's address.
- `ray.init`: RAY_ADDRESS, else the local head while it runs, else "auto" (a cluster on this node,
  as in a Ray pod; an error naming the fix when there is none).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from data_shards.storage import S3Settings
from jobs.local_platform.config import PlatformConfig, load_platform_config
from jobs.ray_auth import auth_env_for, use_token_auth

STATIC_S3_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclasses.dataclass(frozen=True)
class JobEnvironment:
    s3: S3Settings
    tracking_uri: str
    ray_address: str
    """For `ray.init`: host:6379, or "auto"."""
    api_server: str
    """HTTP address of the Ray Jobs API (dashboard)."""
    local: PlatformConfig
    """The local platform's configuration (its state directory tells whether it runs)."""
    ray_auth: dict[str, str] = dataclasses.field(default_factory=dict)
    """What Ray clients need to authenticate (jobs/ray_auth.py): the user's variables, else the
    running local platform's token."""

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None) -> "JobEnvironment":
        from jobs.local_platform.services import Platform

        environ = os.environ if environ is None else environ
        local = load_platform_config(environ=dict(environ))
        platform = Platform(local)
        if any(environ.get(name) for name in STATIC_S3_VARIABLES) or not platform.is_running("s3"):
            s3 = S3Settings.from_env(environ)
        else:
            s3 = S3Settings(endpoint_url=local.s3_endpoint, access_key=local.s3.access_key,
                            secret_key=local.s3.secret_key, region=local.s3.region)
        ray_running = platform.is_running("ray")
        ray_address = environ.get("RAY_ADDRESS") or (local.ray_gcs_address if ray_running else "auto")
        return cls(
            ray_auth=auth_env_for(local.ray_token_path if ray_running else None, environ),
            s3=s3,
            tracking_uri=environ.get("MLFLOW_TRACKING_URI") or local.tracking_uri,
            ray_address=ray_address,
            api_server=environ.get("RAY_API_SERVER_ADDRESS") or local.ray_dashboard_url,
            local=local,
        )

    def use_ray_auth(self) -> None:
        """Make this process's Ray clients authenticate (before `ray.init` or a Jobs API client)."""
        use_token_auth(self.ray_auth)

    def export_s3(self) -> None:
        """Put the S3 settings into this process's environment, for the libraries that read it
        (pyarrow's filesystem inside Ray's storage, boto3). Variables already set are kept."""
        for name, value in self.s3.exported().items():
            os.environ.setdefault(name, value)
