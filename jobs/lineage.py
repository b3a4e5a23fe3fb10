"""What a run records about where it came from: the `isrn.*` lineage tags of its MLflow run.

What ran (the spec and its fingerprint, the code's commit), on what data (the manifests'
annotation fingerprints), where (world size, the Ray job and its Jobs API submission). Model
versions copy them from their run (`jobs/promotion/registry.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

from jobs import tags
from jobs.errors import ConfigError
from jobs.spec import JobSpec


def lineage_tags(spec: JobSpec, fingerprints: dict[str, str]) -> dict[str, str]:
    """The lineage of a run of `spec` on the data of `fingerprints` (split -> annotation fingerprint),
    from a driver connected to Ray."""
    import ray

    return {
        tags.GIT_COMMIT: code_version(), tags.SPEC: spec.name, tags.SPEC_FINGERPRINT: spec.fingerprint(),
        tags.TRAIN_MANIFEST: fingerprints["train"], tags.VAL_MANIFEST: fingerprints["val"],
        tags.WORLD_SIZE: str(spec.scaling.num_workers),
        tags.RAY_JOB_ID: ray.get_runtime_context().get_job_id(),
        tags.RAY_SUBMISSION_ID: submission_id(),
    }


def code_version() -> str:
    """The git commit of a source checkout, else the installed package's version."""
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"isrn-platform=={version('isrn-platform')}"
        except PackageNotFoundError:
            return "unknown"


def submission_id() -> str:
    """The Jobs API submission id of this driver (`isrn submit`), "" when not started by the Jobs API.

    Ray hands it to the driver in the job config's metadata (`job_submission_id`, the key its own
    dashboard uses to match drivers to submissions).
    """
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return ""
    return str((config.get("metadata") or {}).get("job_submission_id", ""))


def pin_init_from(spec: JobSpec, tracking_uri: str) -> tuple[JobSpec, dict[str, str]]:
    """The spec with `model.init_from` pinned to a registered model version, and the run tags that
    record where its starting weights came from.

    `models:/NAME@ALIAS` names whatever version the alias points to when it is read: resolved once
    here, on the driver, every worker loads the same version (`models:/NAME/VERSION`), and the run
    records it, with the run that produced it, even after the alias moves on (ISRN's stage 2 names
    stage 1's run so). Other sources (`models:/NAME/VERSION`, `runs:/…`, checkpoints) are kept as
    given; a version names its run too.
    """
    uri = spec.model.init_from
    if not uri:
        return spec, {}
    found = {tags.INIT_FROM: uri}
    if not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return spec, found
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias = uri[len("models:/"):].partition("@")[::2]
    client = MlflowClient(tracking_uri)
    try:
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in name:
            version = client.get_model_version(*name.rsplit("/", 1))
        else:
            return spec, found
    except MlflowException as error:
        raise ConfigError(f"model.init_from: {uri}: {error.message}; promote a model there first "
                          f"(`isrn promote SPEC`), or give another model URI or checkpoint") from None
    pinned = f"models:/{version.name}/{version.version}"
    found[tags.INIT_FROM_VERSION] = f"{version.name}/{version.version}"
    found[tags.INIT_FROM_RUN] = version.run_id or ""
    found["mlflow.note.content"] = (
        f"Starts from the weights of [{version.name} version {version.version}]"
        f"(#/models/{version.name}/versions/{version.version})" + (f" ({uri} when it started)" if alias else "")
        + (f", trained by run `{version.run_id}`" if version.run_id else "") + ": see `init_from/report.md`.")
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, init_from=pinned)), found
