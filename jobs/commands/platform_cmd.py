"""`isrn platform up | down | status | env`: the local S3, MLflow and Ray head."""

from __future__ import annotations

import json
import shlex
import sys

import click

from jobs.local_platform import Platform, PlatformError, load_platform_config


def _platform() -> Platform:
    try:
        return Platform(load_platform_config())
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None


def _print_status(platform: Platform, as_json: bool = False) -> bool:
    rows = platform.status()
    if as_json:
        click.echo(json.dumps([
            {"service": r.name, "url": r.url, "running": r.running, "healthy": r.healthy, "pid": r.pid,
             "log": str(r.log_path), "detail": r.detail} for r in rows
        ], indent=2))
    else:
        click.echo(f"{'service':8} {'url':24} {'health':10} {'pid':>7}  log")
        for r in rows:
            health = "healthy" if r.healthy else ("unhealthy" if r.running else "stopped")
            click.echo(f"{r.name:8} {r.url:24} {health:10} {r.pid or '-':>7}  {r.log_path}")
        click.echo(f"state directory: {platform.state}")
    return all(r.healthy for r in rows)


@click.group()
def platform() -> None:
    """Start, stop and inspect the local platform (SeaweedFS S3, MLflow, Ray head).

    Configured by platform/local.yaml; every value can be overridden with an
    ISRN_<SECTION>_<FIELD> environment variable, the state directory with ISRN_STATE_DIR.
    """


@platform.command()
def up() -> None:
    """Start the services that are not running and wait until each one is healthy."""
    plat = _platform()
    try:
        plat.up()
    except PlatformError as error:
        raise click.ClickException(str(error)) from None
    _print_status(plat)
    click.echo(f"MLflow UI:      {plat.config.tracking_uri}")
    click.echo(f"Ray dashboard:  {plat.config.ray_dashboard_url}")
    click.echo("Point clients at it with:  eval \"$(isrn platform env)\"")


@platform.command()
@click.option("--purge", is_flag=True, help="Also delete the state directory (S3 data, MLflow database, logs).")
def down(purge: bool) -> None:
    """Stop exactly the processes `up` started; the data stays unless --purge."""
    plat = _platform()
    plat.down(purge=purge)
    click.echo("platform stopped" + (f"; deleted {plat.state}" if purge else f"; data kept in {plat.state}"))


@platform.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Print each service, its URL, health, pid and log file; exit 1 unless all are healthy."""
    if not _print_status(_platform(), as_json):
        sys.exit(1)


@platform.command()
def check() -> None:
    """Smoke-test the running platform: S3 round trip, Ray tasks, and an MLflow run with an artifact."""
    from jobs.local_platform.smoke import SMOKE_EXPERIMENT, run_smoke

    plat = _platform()
    unhealthy = [s.name for s in plat.status() if not s.healthy]
    if unhealthy:
        raise click.ClickException(f"not healthy: {', '.join(unhealthy)}; run `isrn platform up` first")
    run_id = run_smoke(plat.config)
    click.echo(f"smoke run {run_id} in experiment '{SMOKE_EXPERIMENT}': "
               f"{plat.config.tracking_uri}/#/experiments/search?searchFilter=run_id%3D%27{run_id}%27")
    click.echo(f"MLflow REST: {plat.config.tracking_uri}/api/2.0/mlflow/runs/get?run_id={run_id}")


@platform.command()
def env() -> None:
    """Print `export` lines that point S3, MLflow and Ray clients at the local platform."""
    for name, value in _platform().config.client_env().items():
        click.echo(f"export {name}={shlex.quote(value)}")
