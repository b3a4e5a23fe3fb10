"""`isrn tune SPEC`: a Ray Tune study of the spec's `tune:` section, tracked as nested MLflow runs.

    isrn tune tune-smoke
    isrn tune tune-smoke --set tune.num_samples=8
    isrn tune tune-smoke --resume tune-smoke-20250101-120000     # same SPEC and --set values
"""

from __future__ import annotations

import sys

import click

from jobs.errors import ConfigError, ServiceUnavailableError
from jobs.metrics import VAL_AP_HARD
from jobs.spec import load_spec


@click.command()
@click.argument("spec")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field, e.g. --set tune.num_samples=8.")
@click.option("--resume", metavar="STUDY", help="Resume an interrupted study by name; finished trials are kept.")
@click.option("--name", metavar="STUDY", help="Name of the study (default: SPEC name, UTC time and a random "
                                              "suffix); a study of that name with Tune state is resumed, so a "
                                              "retried job continues its study.")
@click.option("--dry-run", is_flag=True, help="Validate the spec and its search space; start nothing.")
@click.option("--explain", is_flag=True, help="Print the resolved spec with each field's description and default.")
def tune(spec: str, overrides: tuple[str, ...], resume: str | None, name: str | None, dry_run: bool,
         explain: bool) -> None:
    """Search SPEC's tune.space with Ray Tune: every trial is the training job of SPEC.

    ASHA stops weak trials early on val AP Hard; MLflow gets a parent run for the study, a nested
    run per trial, a trials table and a plot of AP Hard against each searched dimension.
    """
    from jobs.tune.search_space import check_space

    try:
        job_spec = load_spec(spec, overrides)
        check_space(job_spec)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if explain:
        from jobs.spec import explain as explain_spec

        click.echo(explain_spec(job_spec))
        return
    if dry_run:
        click.echo(job_spec.to_yaml(), nl=False)
        return
    from jobs.train.lease import LeaseHeldError, LeaseLostError
    from jobs.tune.study import run_study

    try:
        outcome = run_study(job_spec, resume=resume, name=name)
    except (ConfigError, ServiceUnavailableError, LeaseHeldError, LeaseLostError) as error:
        raise click.ClickException(str(error)) from None
    if outcome.interrupted:
        click.echo(f"study {outcome.study} interrupted: resume with `isrn tune {spec} --resume {outcome.study}`", err=True)
        sys.exit(130)
    stopped = sum(row["early_stopped"] == "true" for row in outcome.trials)
    click.echo(f"study {outcome.study}: {len(outcome.trials)} trials, {stopped} stopped early, "
               f"{outcome.wall_s:.0f} s")
    metric = job_spec.tune.metric if job_spec.tune else VAL_AP_HARD
    dims = list(job_spec.tune.space) if job_spec.tune else []
    click.echo("  ".join(["trial", "status", "early", f"best_{metric}", *dims]))
    for row in outcome.trials:
        value = row.get(f"best_{metric}", float("nan"))
        click.echo("  ".join([row["trial_id"], row["status"], row["early_stopped"], f"{value:.4f}",
                              *(str(row[d]) for d in dims)]))
    click.echo(f"MLflow study run: {outcome.parent_run_url}")
    if outcome.model_uri:
        click.echo(f"best trial run {outcome.best_run_id}, model {outcome.model_uri}")
    if outcome.failed_trials:
        click.echo(f"{len(outcome.failed_trials)} of {len(outcome.trials)} trials failed: "
                   f"{', '.join(outcome.failed_trials)} (their errors: the Ray logs, their MLflow runs)", err=True)
        sys.exit(1)
