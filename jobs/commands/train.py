"""`isrn train SPEC`: run a job spec on the Ray cluster the environment points to (local by default)."""

from __future__ import annotations

import sys

import click

from jobs.errors import ConfigError, ServiceUnavailableError
from jobs.metrics import AP_METRICS
from jobs.spec import load_spec


@click.command()
@click.argument("spec")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field, e.g. --set optim.lr=0.02 --set train.epochs=3.")
@click.option("--resume", metavar="RUN", help="Continue a stopped run by its run name (from its MLflow run).")
@click.option("--dry-run", is_flag=True, help="Validate the spec and print it resolved; start nothing.")
@click.option("--explain", is_flag=True, help="Print the resolved spec with each field's description and default.")
def train(spec: str, overrides: tuple[str, ...], resume: str | None, dry_run: bool, explain: bool) -> None:
    """Train ISRN with Ray Train DDP as SPEC says (a YAML path or a name in jobs/specs).

    Metrics, the resolved spec and the best model go to MLflow; checkpoints to S3.
    """
    try:
        job_spec = load_spec(spec, overrides)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if explain:
        from jobs.spec import explain as explain_spec

        click.echo(explain_spec(job_spec))
        return
    if dry_run:
        click.echo(job_spec.to_yaml(), nl=False)
        return
    from ray.train import TrainingFailedError

    from jobs.train.driver import run_training

    try:
        outcome = run_training(job_spec, resume=resume)
    except (ConfigError, ServiceUnavailableError) as error:
        raise click.ClickException(str(error)) from None
    except TrainingFailedError as error:
        click.echo(f"training failed: {error}", err=True)
        sys.exit(1)
    ap = {name: outcome.metrics[name] for name in AP_METRICS if name in outcome.metrics}
    click.echo(f"run {outcome.run_name} finished: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(ap.items())))
    click.echo(f"MLflow run: {outcome.mlflow_run_url}")
    if outcome.model_uri:
        click.echo(f"model: {outcome.model_uri}")
