"""`isrn promote`: register the best run's model and move the `champion` alias if it wins.

    isrn promote                                  # best run of the training specs' experiment
    isrn promote --experiment isrn-tune-smoke --study tune-smoke-20250101-120000
    isrn promote --run RUN_ID --margin 0.01
    isrn promote --dry-run                        # the decision and its reason; changes nothing
"""

from __future__ import annotations

import json

import click

from jobs.spec import SPECS_DIR, SpecError, load_spec


def default_spec() -> str:
    """The spec whose experiment and registered model `isrn promote` uses without arguments."""
    return "demo" if (SPECS_DIR / "demo.yaml").is_file() else "smoke"


@click.command()
@click.option("--spec", "spec_name", default=None, metavar="SPEC",
              help="Take the experiment and registered model from this spec (default: demo, else smoke).")
@click.option("--experiment", default=None, help="MLflow experiment to pick the best run from.")
@click.option("--study", default=None, metavar="STUDY", help="Only the trials of this Tune study.")
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Promote this run instead of the best one.")
@click.option("--metric", default="val_ap_hard", show_default=True, help="Higher is better.")
@click.option("--margin", default=0.0, show_default=True, type=float,
              help="Beat the champion by at least this to take the alias.")
@click.option("--model-name", default=None, help="Registered model (default: the spec's tracking.registered_model).")
@click.option("--dry-run", is_flag=True, help="Print the decision and its reason; register and move nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def promote(spec_name: str | None, experiment: str | None, study: str | None, run_id: str | None, metric: str,
            margin: float, model_name: str | None, dry_run: bool, as_json: bool) -> None:
    """Register the best run's logged model as a new version and move `champion` if it beats it."""
    from jobs.environment import JobEnvironment
    from jobs.promotion import PromotionError, PromotionRule, describe
    from jobs.promotion import promote as run_promotion

    try:
        spec = load_spec(spec_name or default_spec())
    except SpecError as error:
        raise click.ClickException(str(error)) from None
    env = JobEnvironment.resolve()
    try:
        result = run_promotion(env.mlflow_uri, experiment=experiment or spec.tracking.experiment,
                               name=model_name or spec.tracking.registered_model,
                               rule=PromotionRule(metric=metric, margin=margin), run_id=run_id, study=study,
                               dry_run=dry_run)
    except PromotionError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(describe(result)))
        return
    verb = ("would move" if dry_run else "moved") if result.decision.promote else ("would keep" if dry_run else "kept")
    version = f"version {result.version}" if result.version else "a new version"
    target = f"{result.registered_model}@champion"
    prefix = "[dry run] " if dry_run else ""
    if result.decision.promote:
        click.echo(f"{prefix}{verb} {target} to {version} (run {result.candidate.run_id}): {result.decision.reason}")
    else:
        where = f"v{result.champion_before.version}" if result.champion_before else "none"
        click.echo(f"{prefix}{verb} {target} at {where}; {version} (run {result.candidate.run_id}) "
                   f"not promoted: {result.decision.reason}")
