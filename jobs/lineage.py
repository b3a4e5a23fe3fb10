"""What a run records about where it came from: the `isrn.*` lineage tags of its MLflow run.

What ran (the spec and its fingerprint, the code's commit), on what data (the manifests'
annotation fingerprints), where (world size, the Ray job and its Jobs API submission). Model
versions copy them from their run (`jobs/promotion/registry.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from jobs import tags
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
