"""Where a job's services are: the environment's S3, MLflow and Ray, or the local platform's.

The standard variables win (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, MLFLOW_TRACKING_URI, RAY_ADDRESS,
RAY_API_SERVER_ADDRESS); what they leave unset falls back to the local platform of
`platform/local.yaml`, so `isrn train` on a fresh `isrn platform up` needs no exports.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from data_shards.storage import S3Settings
from jobs.local_platform.config import load_platform_config


@dataclasses.dataclass(frozen=True)
class JobEnvironment:
    s3: S3Settings
    mlflow_uri: str
    ray_address: str
    """GCS address for `ray.init` (host:6379)."""
    api_server: str
    """HTTP address of the Ray Jobs API (dashboard)."""

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None) -> "JobEnvironment":
        environ = os.environ if environ is None else environ
        local = load_platform_config(environ=dict(environ))
        if environ.get("AWS_ENDPOINT_URL") or environ.get("AWS_ACCESS_KEY_ID"):
            s3 = S3Settings.from_env(environ)
        else:
            s3 = S3Settings(endpoint_url=local.s3_endpoint, access_key=local.s3.access_key,
                            secret_key=local.s3.secret_key, region=local.s3.region)
        return cls(
            s3=s3,
            mlflow_uri=environ.get("MLFLOW_TRACKING_URI") or local.mlflow_uri,
            ray_address=environ.get("RAY_ADDRESS") or local.ray_gcs_address,
            api_server=environ.get("RAY_API_SERVER_ADDRESS") or local.ray_dashboard_url,
        )

    def worker_env(self) -> dict[str, str]:
        """Variables Ray workers need to reach S3 and MLflow (passed in the runtime environment)."""
        # RAY_ADDRESS too: Train's placement-group cleaner calls ray.init() and refuses to guess
        # when several Ray instances run on the machine.
        env = {"MLFLOW_TRACKING_URI": self.mlflow_uri, "AWS_DEFAULT_REGION": self.s3.region,
               "RAY_ADDRESS": self.ray_address}
        if self.s3.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.s3.endpoint_url
        if self.s3.access_key:
            env["AWS_ACCESS_KEY_ID"] = self.s3.access_key
        if self.s3.secret_key:
            env["AWS_SECRET_ACCESS_KEY"] = self.s3.secret_key
        return env
