"""`isrn submit SPEC` and `isrn jobs list | logs | stop`: the Ray Jobs API."""

from __future__ import annotations

import sys

import click

from jobs import tags
from jobs.spec import SpecError, load_spec

_ADDRESS_HELP = "Ray Jobs API address (default: RAY_API_SERVER_ADDRESS, else the local head's dashboard)."


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    from jobs.environment import JobEnvironment

    address = address or JobEnvironment.resolve().api_server
    try:
        return JobSubmissionClient(address), address
    except Exception as error:  # noqa: BLE001 - Ray raises several types for an unreachable server
        raise click.ClickException(
            f"cannot reach the Ray Jobs API at {address}: {error}; start the local platform "
            f"(`isrn platform up`) or pass --address"
        ) from None


@click.command()
@click.argument("spec")
@click.option("--address", help=_ADDRESS_HELP)
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE", help="Override a spec field.")
@click.option("--command", "command", type=click.Choice(["train", "tune"]), default="train", show_default=True,
              help="What the job runs with the spec.")
@click.option("--no-wait", is_flag=True, help="Print the job id and return instead of following the logs.")
@click.option("--python", help="Interpreter on the head (default: this one for a local head, else `python`).")
def submit(spec: str, address: str | None, overrides: tuple[str, ...], command: str, no_wait: bool,
           python: str | None) -> None:
    """Submit SPEC to a Ray cluster through the Jobs API and follow its logs.

    The spec is validated here and travels resolved, as the job's working directory.
    """
    from jobs.environment import JobEnvironment
    from jobs.submission import build_submission, follow_logs

    try:
        job_spec = load_spec(spec, overrides)
    except SpecError as error:
        raise click.ClickException(str(error)) from None
    client, address = _client(address)
    entrypoint, runtime_env, _ = build_submission(job_spec, command, JobEnvironment.resolve(), address, python)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                               metadata={tags.SPEC: job_spec.name, tags.COMMAND: command})
    click.echo(f"submitted job {job_id} to {address}")
    if no_wait:
        click.echo(f"follow it with: isrn jobs logs {job_id} --follow")
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
def list_jobs(address: str | None) -> None:
    """List the cluster's jobs, newest first: id, status, entrypoint."""
    client, _ = _client(address)
    for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True):
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
