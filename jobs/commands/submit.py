"""`isrn submit SPEC` and `isrn jobs list | logs | stop`: the Ray Jobs API, as `ray job` users know it.

    isrn submit smoke                                        # the local platform
    isrn submit widerface-r50 --address http://127.0.0.1:8265   # a cluster through kubectl port-forward
    isrn submit smoke --env WANDB_MODE=offline --runtime-env extra.yaml --submission-id my-run-1 --no-wait
    isrn submit smoke --run-name nightly-42     # submitted again, the same name resumes that run
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from jobs import tags
from jobs.errors import ConfigError
from jobs.spec import load_spec

_ADDRESS_HELP = ("Ray Jobs API address; wins over RAY_API_SERVER_ADDRESS and RAY_ADDRESS "
                 "(default: RAY_API_SERVER_ADDRESS, else the local platform's dashboard).")


def _client(address: str | None):
    from jobs.environment import JobEnvironment
    from jobs.submission import jobs_client, submission_address

    env = JobEnvironment.resolve()
    env.use_ray_auth()
    address = submission_address(address, env.api_server)
    try:
        return jobs_client(address), address
    except Exception as error:  # noqa: BLE001 - Ray raises several types for an unreachable or refusing server
        raise click.ClickException(_explain(error, address)) from None


def _explain(error: Exception, address: str) -> str:
    if type(error).__name__ == "AuthenticationError":
        return (f"the Ray cluster at {address} refused the request: it uses token authentication. Set RAY_AUTH_TOKEN "
                f"(or RAY_AUTH_TOKEN_PATH) to its token; for the local platform run `eval \"$(isrn platform env)\"`.\n"
                f"{error}")
    return (f"cannot reach the Ray Jobs API at {address}: {error}; start the local platform (`isrn platform up`), "
            f"or give --address (through `kubectl port-forward svc/isrn-head-svc 8265` for a cluster)")


@click.command()
@click.argument("spec")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a spec field.")
@click.option("--command", "command", type=click.Choice(["train", "tune"]), default="train", show_default=True,
              help="What the job runs with the spec.")
@click.option("--submission-id", help="The job's id (default: Ray makes one); resubmitting an id is refused.")
@click.option("--run-name", metavar="NAME", help="The run's name (a study's with --command tune). Default: a new, "
                                                  "unique one, printed. A job submitted with the name of an "
                                                  "existing run resumes it.")
@click.option("--runtime-env", "runtime_env_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A YAML or JSON file of Ray runtime_env fields (pip, py_modules, env_vars, ...).")
@click.option("--env", "env_items", multiple=True, metavar="KEY[=VALUE]",
              help="A variable for the job (KEY alone: this shell's value). Credentials are refused.")
@click.option("--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the job's driver.")
@click.option("--no-wait", is_flag=True, help="Print the job id and return instead of following the logs.")
@click.option("--python", help="Interpreter on the head (default: this one for the local platform, else `python`).")
def submit(spec: str, address: str | None, overrides: tuple[str, ...], command: str, submission_id: str | None,
           run_name: str | None, runtime_env_file: Path | None, env_items: tuple[str, ...],
           entrypoint_num_cpus: float | None, no_wait: bool, python: str | None) -> None:
    """Submit SPEC to a Ray cluster through the Jobs API and follow its logs.

    The spec is validated here and travels resolved, as the job's working directory. Nothing else
    from this shell goes to the cluster unless named with --env or --runtime-env.
    """
    import os

    from jobs.environment import JobEnvironment
    from jobs.local_platform.services import Platform
    from jobs.submission import (
        SubmissionError, build_submission, follow_logs, is_local_platform, parse_env, read_runtime_env,
    )

    from jobs.train.resume import check_run_name, new_run_name

    try:
        job_spec = load_spec(spec, overrides)
        env_vars = parse_env(env_items, os.environ)
        runtime_env = read_runtime_env(runtime_env_file)
        # Named here, so that the user knows it before the job starts and two submissions of one spec
        # in the same second are two runs.
        run_name = check_run_name(run_name) if run_name else new_run_name(job_spec)
    except (ConfigError, SubmissionError) as error:
        raise click.ClickException(str(error)) from None
    client, address = _client(address)
    local = is_local_platform(address, Platform(JobEnvironment.resolve().local).platform_id)
    name_flag = "--run-name" if command == "train" else "--name"
    entrypoint, job_env, folder = build_submission(job_spec, command, local=local, python=python,
                                                   extra_args=(name_flag, run_name), env_vars=env_vars,
                                                   runtime_env=runtime_env)
    try:
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=job_env, submission_id=submission_id,
                                   entrypoint_num_cpus=entrypoint_num_cpus,
                                   metadata={tags.SPEC: job_spec.name, tags.COMMAND: command,
                                             tags.RAY_RUN_NAME: run_name})
    except Exception as error:  # noqa: BLE001 - the server's message is the explanation
        raise click.ClickException(f"the Ray Jobs API at {address} refused the job: {error}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # uploaded to the cluster by submit_job
    where = "the local platform" if local else "a remote cluster: it uses its own S3 and MLflow settings"
    click.echo(f"submitted job {job_id} to {address} ({where}): {'run' if command == 'train' else 'study'} "
               f"{run_name}")
    if no_wait:
        click.echo(f"follow it with: isrn jobs logs {job_id} --follow --address {address}")
        return
    status = follow_logs(client, job_id)
    click.echo(f"job {job_id} {status}")
    if status != "SUCCEEDED":
        sys.exit(1)


@click.group()
def jobs() -> None:
    """List, follow and stop jobs on the Ray cluster (Jobs API)."""


@jobs.command("list")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def list_jobs(address: str | None, as_json: bool) -> None:
    """List the cluster's jobs, newest first: id, status, entrypoint."""
    client, _ = _client(address)
    found = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    if as_json:
        click.echo(json.dumps([{"id": j.submission_id or j.job_id, "status": str(j.status.value),
                                "entrypoint": j.entrypoint, "metadata": j.metadata or {}} for j in found], indent=1))
        return
    for job in found:
        click.echo(f"{job.submission_id or job.job_id:32} {str(job.status.value):10} {job.entrypoint}")


@jobs.command()
@click.argument("job_id")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
def logs(job_id: str, address: str | None, follow: bool) -> None:
    """Print the logs of JOB_ID."""
    from jobs.submission import follow_logs

    client, _ = _client(address)
    if follow:
        follow_logs(client, job_id)
    else:
        click.echo(client.get_job_logs(job_id), nl=False)


@jobs.command()
@click.argument("job_id")
@click.option("--address", help=_ADDRESS_HELP)
def stop(job_id: str, address: str | None) -> None:
    """Stop JOB_ID."""
    client, _ = _client(address)
    stopped = client.stop_job(job_id)
    click.echo(f"job {job_id} {'stopping' if stopped else 'was not running'}")
