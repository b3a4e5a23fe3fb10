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
@click.option("--resume", metavar="RUN", help="Continue a stopped run by its run name (its MLflow run's "
                                               "isrn.ray_run_name); the run must exist, with the same spec.")
@click.option("--run-name", metavar="RUN", help="Name the run: a new run under that name, or the run of that name "
                                                "resumed if it exists (a retried job continues its run).")
@click.option("--allow-change", is_flag=True, help="With --resume / --run-name: accept changes of the spec fields a "
                                                   "run may change (train.epochs, eval, logging and checkpoint "
                                                   "frequency, timeouts, failure budget, model logging).")
@click.option("--dry-run", is_flag=True, help="Validate the spec and print it resolved; start nothing.")
@click.option("--explain", is_flag=True, help="Print the resolved spec with each field's description and default.")
def train(spec: str, overrides: tuple[str, ...], resume: str | None, run_name: str | None, allow_change: bool,
          dry_run: bool, explain: bool) -> None:
    """Train ISRN with Ray Train DDP as SPEC says (a YAML path or a name in jobs/specs).

    Metrics, the resolved spec and the best model go to MLflow; checkpoints to S3. One job at a time
    writes a run: a resume of a run another job is training is refused.
    """
    from jobs.train.resume import check_run_name

    try:
        if resume and run_name and resume != run_name:
            raise ConfigError(f"--resume {resume} and --run-name {run_name} name two runs: give one")
        for flag, name in (("--resume", resume), ("--run-name", run_name)):
            if name is not None:
                check_run_name(name, flag)
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
    from jobs.train.lease import LeaseHeldError, LeaseLostError

    try:
        outcome = run_training(job_spec, resume=resume, run_name=run_name, allow_change=allow_change)
    except (ConfigError, ServiceUnavailableError, LeaseHeldError, LeaseLostError) as error:
        raise click.ClickException(str(error)) from None
    except TrainingFailedError as error:
        click.echo(f"training failed: {error}", err=True)
        sys.exit(1)
    ap = {name: outcome.metrics[name] for name in AP_METRICS if name in outcome.metrics}
    click.echo(f"run {outcome.run_name} finished: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(ap.items())))
    click.echo(f"MLflow run: {outcome.mlflow_run_url}")
    if outcome.model_uri:
        click.echo(f"model: {outcome.model_uri}")
