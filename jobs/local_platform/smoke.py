"""A smoke run through the three services: an S3 round trip, a Ray task, an MLflow run.

`isrn platform check` runs it; `make demo` uses it to show the platform works end to end.
"""

from __future__ import annotations

import logging
import time
import uuid

from jobs.local_platform.config import PlatformConfig

log = logging.getLogger(__name__)

SMOKE_EXPERIMENT = "platform-smoke"


def run_smoke(config: PlatformConfig) -> str:
    """Exercise S3, Ray and MLflow; return the MLflow run id of the smoke run."""
    import boto3
    import mlflow
    import ray

    s3 = boto3.client(
        "s3", endpoint_url=config.s3_endpoint, aws_access_key_id=config.s3.access_key,
        aws_secret_access_key=config.s3.secret_key, region_name=config.s3.region,
    )
    key = f"smoke/{uuid.uuid4().hex}.txt"
    started = time.perf_counter()
    s3.put_object(Bucket=config.s3.bucket_checkpoints, Key=key, Body=b"isrn smoke")
    assert s3.get_object(Bucket=config.s3.bucket_checkpoints, Key=key)["Body"].read() == b"isrn smoke"
    s3.delete_object(Bucket=config.s3.bucket_checkpoints, Key=key)
    s3_seconds = time.perf_counter() - started

    started = time.perf_counter()
    from jobs.ray_auth import auth_env_for, use_token_auth

    use_token_auth(auth_env_for(config.ray_token_path, {}))
    ray.init(address=config.ray_gcs_address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        square = ray.remote(lambda x: x * x)
        ray_result = sum(ray.get([square.remote(i) for i in range(4)]))
        cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    finally:
        ray.shutdown()
    ray_seconds = time.perf_counter() - started

    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_experiment(SMOKE_EXPERIMENT)
    with mlflow.start_run(run_name="platform-smoke") as run:
        mlflow.log_params({"s3_endpoint": config.s3_endpoint, "ray_cpus": cluster_cpus})
        mlflow.log_metrics({"s3_round_trip_s": s3_seconds, "ray_tasks_s": ray_seconds, "ray_sum": ray_result})
        mlflow.log_text("S3, Ray and MLflow answered.\n", "smoke/report.txt")
    log.info("smoke run %s logged to %s", run.info.run_id, config.tracking_uri)
    return run.info.run_id
