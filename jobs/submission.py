"""Submitting job specs through the Ray Jobs API: entrypoint, runtime environment, log following."""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from jobs.environment import JobEnvironment
from jobs.spec import JobSpec

SPEC_FILE = "job_spec.yaml"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def is_local_address(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in {"127.0.0.1", "localhost", "::1"}


def build_submission(spec: JobSpec, command: str, env: JobEnvironment, address: str,
                     python: str | None = None, extra_args: tuple[str, ...] = ()) -> tuple[str, dict, Path]:
    """(entrypoint, runtime_env, working_dir) for `isrn <command>` of the resolved spec on the cluster.

    The resolved spec travels as the job's working_dir (uploaded by Ray), so the cluster runs exactly
    what was validated here. The entrypoint runs in a shell on the head, where `python` may be the
    system interpreter (shared/PLATFORM.md): on the local head we name this environment's one.
    """
    local = is_local_address(address)
    interpreter = python or (sys.executable if local else "python")
    working_dir = Path(tempfile.mkdtemp(prefix="isrn-submit-"))
    (working_dir / SPEC_FILE).write_text(spec.to_yaml())
    args = " ".join(shlex.quote(a) for a in extra_args)
    entrypoint = f"{shlex.quote(interpreter)} -m jobs.cli {command} {SPEC_FILE} {args}".strip()
    runtime_env: dict = {"working_dir": str(working_dir)}
    if local:
        # The local head learns S3 and MLflow from us; a remote cluster has its own settings
        # (k8s: the isrn-platform ConfigMap and isrn-s3 Secret), and no credential leaves this shell.
        runtime_env["env_vars"] = env.worker_env()
    return entrypoint, runtime_env, working_dir


def follow_logs(client, job_id: str, poll_s: float = 1.0, out=sys.stdout) -> str:
    """Print the job's logs as they grow until it ends; return its final status."""
    printed = 0
    while True:
        status = str(getattr(client.get_job_status(job_id), "value", ""))
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)
