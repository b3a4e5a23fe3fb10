"""Submitting job specs through the Ray Jobs API: where to, what travels, following the logs.

    address = submission_address(explicit, env)       # --address wins over every variable
    with jobs_client(address) as client: ...
    local = is_local_platform(client_address)          # asked of the cluster, not guessed from the URL

What travels is the resolved spec (as the job's `working_dir`) and nothing from this shell unless
the user names it (`--env KEY[=VALUE]`, `--runtime-env FILE`, as `ray job submit` users expect).
Credentials never travel: the local platform's head holds them in its own environment, a cluster in
its Secrets or IAM role (k8s/README.md). A port-forward to a cluster at 127.0.0.1:8265 is a remote
cluster: the local platform is recognised by the node label its head carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import yaml

from jobs.credentials import is_credential
from jobs.spec import JobSpec

log = logging.getLogger(__name__)

SPEC_FILE = "job_spec.yaml"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
"""What Ray's JobSubmissionClient prefers to the address it is handed (docs/platform-notes.md)."""


class SubmissionError(ValueError):
    """A submission that cannot be made as asked; the message names the option and the fix."""


def submission_address(explicit: str | None, default: str) -> str:
    """`--address`, else the environment's (RAY_API_SERVER_ADDRESS via `default`), as an http URL."""
    address = (explicit or default).rstrip("/")
    return address if "://" in address else f"http://{address}"


@contextlib.contextmanager
def _only(address: str) -> Iterator[None]:
    """Hide the variables Ray would prefer to `address` while a client is made and used."""
    saved = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def jobs_client(address: str):
    """A JobSubmissionClient for exactly `address`, whatever RAY_API_SERVER_ADDRESS / RAY_ADDRESS say."""
    from ray.job_submission import JobSubmissionClient

    with _only(address):
        return JobSubmissionClient(address)


def is_local_platform(address: str, platform_id: str | None) -> bool:
    """Whether the cluster at `address` is this machine's local platform: its head carries our label.

    Any doubt (no local platform ever started, an old cluster, a refused request) means remote,
    where nothing from this shell is sent.
    """
    if not platform_id:
        return False
    from ray.util.state import list_nodes

    from jobs.local_platform.services import is_local_platform as labelled_local

    nodes: list = []
    deadline = time.monotonic() + 15
    while not nodes and time.monotonic() < deadline:  # a head that just started may not be listed yet
        try:
            with _only(address):
                nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], detail=True, timeout=10,
                                   raise_on_missing_output=False)
        except Exception as error:  # noqa: BLE001 - whatever went wrong, do not treat the cluster as ours
            log.info("cannot list the nodes of %s (%s): taking it for a remote cluster", address, error)
            return False
        if not nodes:
            time.sleep(1)
    return labelled_local((getattr(node, "labels", None) for node in nodes), platform_id)


def parse_env(items: tuple[str, ...], environ: Mapping[str, str]) -> dict[str, str]:
    """`--env KEY=VALUE` or `--env KEY` (this shell's value); a credential is refused."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise SubmissionError(f"--env {item!r}: expected KEY=VALUE or KEY")
        if is_credential(key):
            raise SubmissionError(
                f"--env {key}: credentials never travel with a job (the Ray dashboard shows a job's runtime "
                f"environment to everyone who can reach it); give the cluster its own, as a Kubernetes Secret "
                f"or an IAM role (k8s/README.md), or the local platform's head in its environment")
        if not sep:
            if key not in environ:
                raise SubmissionError(f"--env {key}: not set in this shell; give --env {key}=VALUE")
            value = environ[key]
        env[key] = value
    return env


def read_runtime_env(path: Path | None) -> dict[str, Any]:
    """A `--runtime-env` file (YAML or JSON, Ray's runtime_env fields); its env_vars are checked like --env."""
    if path is None:
        return {}
    try:
        runtime_env = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SubmissionError(f"--runtime-env {path}: {error}") from None
    if not isinstance(runtime_env, dict):
        raise SubmissionError(f"--runtime-env {path}: expected a mapping of runtime_env fields")
    if "working_dir" in runtime_env:
        raise SubmissionError(f"--runtime-env {path}: working_dir is the resolved spec's folder; "
                              "use py_modules or pip for code")
    bad = [key for key in runtime_env.get("env_vars") or {} if is_credential(key)]
    if bad:
        raise SubmissionError(f"--runtime-env {path}: env_vars {', '.join(bad)}: credentials never travel with a job")
    return runtime_env


def build_submission(spec: JobSpec, command: str, *, local: bool, python: str | None = None,
                     extra_args: tuple[str, ...] = (), env_vars: dict[str, str] | None = None,
                     runtime_env: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], Path]:
    """(entrypoint, runtime_env, working_dir) for `isrn <command>` of the resolved spec on the cluster.

    The resolved spec travels as the job's working_dir (uploaded by Ray), so the cluster runs exactly
    what was validated here. The entrypoint runs in a shell on the head, where `python` may be the
    system interpreter (docs/platform-notes.md): on the local head it is this environment's.
    """
    interpreter = python or (sys.executable if local else "python")
    working_dir = Path(tempfile.mkdtemp(prefix="isrn-submit-"))
    (working_dir / SPEC_FILE).write_text(spec.to_yaml())
    args = " ".join(shlex.quote(a) for a in extra_args)
    entrypoint = f"{shlex.quote(interpreter)} -m jobs.cli {command} {SPEC_FILE} {args}".strip()
    merged: dict[str, Any] = {**(runtime_env or {}), "working_dir": str(working_dir)}
    variables = {**(merged.get("env_vars") or {}), **(env_vars or {})}
    if variables:
        merged["env_vars"] = variables
    return entrypoint, merged, working_dir


def follow_logs(client, job_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs as they come (the Jobs API's websocket) until it ends; return its status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    asyncio.run(tail())
    return str(getattr(client.get_job_status(job_id), "value", client.get_job_status(job_id)))
