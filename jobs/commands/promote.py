"""`isrn promote [SPEC]`: register the best run's logged model and move the `champion` alias if it wins.

    isrn promote smoke                  # best run of spec smoke's experiment, into its registered model
    isrn promote                        # the experiment of the most recently finished training run
    isrn promote --experiment isrn-tune-smoke --study tune-smoke-20250101-120000
    isrn promote smoke --run RUN_ID --margin 0.01
    isrn promote smoke --dry-run        # the decision, its reason, and why other runs are not candidates
    isrn promote --model-name isrn-face --break-lock   # clear the lock a crashed promotion left
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import click

from jobs.errors import ConfigError
from jobs.metrics import VAL_AP_HARD
from jobs.promotion.lock import LockPolicy
from jobs.spec import TrackingConfig, load_spec

DEFAULT_MODEL = TrackingConfig.__pydantic_fields__["registered_model"].default
DEFAULT_LOCK = LockPolicy()


@dataclasses.dataclass(frozen=True)
class Target:
    experiment: str | None
    model_name: str
    origin: str | None = None
    """How the experiment was chosen when the command did not name it (printed)."""


def _registered_model(spec_name: str | None) -> str:
    """The spec's tracking.registered_model; the default for a spec that is not a shipped file."""
    try:
        return load_spec(spec_name).tracking.registered_model if spec_name else DEFAULT_MODEL
    except ConfigError:
        return DEFAULT_MODEL


def resolve_target(tracking_uri: str, spec_name: str | None, experiment: str | None, run_id: str | None,
                   model_name: str | None) -> Target:
    """The experiment and registered model: from SPEC, the flags, or the latest finished training run."""
    from mlflow.tracking import MlflowClient

    from jobs.promotion import latest_training_run
    from jobs.tags import SPEC

    if spec_name:
        try:
            spec = load_spec(spec_name)
        except ConfigError as error:
            raise click.BadParameter(str(error), param_hint="SPEC") from None
        return Target(experiment or spec.tracking.experiment, model_name or spec.tracking.registered_model)
    if experiment or run_id:
        return Target(experiment, model_name or DEFAULT_MODEL)
    latest = latest_training_run(MlflowClient(tracking_uri))
    if latest is None:
        raise click.ClickException(f"no finished training run on {tracking_uri}: train one (`isrn train smoke`), "
                                   "or name the experiment: `isrn promote SPEC` or `--experiment NAME`")
    run, name = latest
    spec_tag = run.data.tags.get(SPEC)
    ended = dt.datetime.fromtimestamp((run.info.end_time or 0) / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    origin = (f"experiment {name!r}: that of the most recently finished training run ({run.info.run_name}, "
              f"spec {spec_tag}, finished {ended}); name another with `isrn promote SPEC` or --experiment")
    return Target(name, model_name or _registered_model(spec_tag), origin)


@click.command()
@click.argument("spec_name", metavar="[SPEC]", required=False)
@click.option("--experiment", default=None, help="MLflow experiment to pick the best run from (default: the SPEC's).")
@click.option("--study", default=None, metavar="STUDY", help="Only the trials of this Tune study.")
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Promote this run instead of the best one.")
@click.option("--metric", default=VAL_AP_HARD, show_default=True,
              help="A metric of the logged model (its own weights' AP); higher is better.")
@click.option("--margin", default=0.0, show_default=True, type=float,
              help="Beat the champion by at least this to take the alias.")
@click.option("--model-name", default=None,
              help=f"Registered model (default: the SPEC's tracking.registered_model, else {DEFAULT_MODEL}).")
@click.option("--dry-run", is_flag=True, help="Print the decision, its reason and the runs that are not candidates; "
                                              "register and move nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.option("--lock-stale-s", default=DEFAULT_LOCK.stale_s, show_default=True, type=float,
              help="Break a promotion lock older than this (server clock): its holder crashed.")
@click.option("--lock-wait-s", default=DEFAULT_LOCK.wait_s, show_default=True, type=float,
              help="Wait this long for another promotion's lock; must exceed --lock-stale-s.")
@click.option("--break-lock", is_flag=True, help="Remove the registered model's promotion lock (a crashed "
                                                 "promotion's) whatever its age, and exit.")
def promote(spec_name: str | None, experiment: str | None, study: str | None, run_id: str | None, metric: str,
            margin: float, model_name: str | None, dry_run: bool, as_json: bool, lock_stale_s: float,
            lock_wait_s: float, break_lock: bool) -> None:
    """Register the best run's logged model as a new version and move `champion` if it beats it.

    SPEC (e.g. `smoke` after `isrn train smoke`) names the experiment and the registered model;
    without it, the experiment of the most recently finished training run is used.
    """
    from jobs.environment import JobEnvironment
    from jobs.promotion import PromotionError, PromotionRule, describe
    from jobs.promotion import promote as run_promotion

    try:
        policy = LockPolicy(stale_s=lock_stale_s, wait_s=lock_wait_s)
        rule = PromotionRule(metric=metric, margin=margin)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    from jobs.errors import ServiceUnavailableError
    from jobs.preflight import check_tracking_server

    uri = JobEnvironment.resolve().tracking_uri
    try:
        check_tracking_server(uri)
        if break_lock:
            _break_lock(uri, model_name or _registered_model(spec_name))
            return
        target = resolve_target(uri, spec_name, experiment, run_id, model_name)
        result = run_promotion(uri, experiment=target.experiment, name=target.model_name, rule=rule, run_id=run_id,
                               study=study, dry_run=dry_run, lock=policy)
    except (PromotionError, ServiceUnavailableError) as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps({**describe(result), "experiment_from": target.origin or "named"}))
        return
    if target.origin:
        click.echo(target.origin)
    _echo_result(result, dry_run)


def _break_lock(tracking_uri: str, name: str) -> None:
    from mlflow.tracking import MlflowClient

    from jobs.promotion import clear_lock, lock_name

    holder = clear_lock(MlflowClient(tracking_uri), name)
    if holder is None:
        click.echo(f"{lock_name(name)!r} does not exist: no promotion of {name!r} holds the lock")
    else:
        click.echo(f"removed {lock_name(name)!r} (owner {holder.owner})")


def _echo_result(result, dry_run: bool) -> None:
    decision, candidate = result.decision, result.candidate
    verb = ("would move" if dry_run else "moved") if decision.promote else ("would keep" if dry_run else "kept")
    version = f"version {result.version}" if result.version else "a new version"
    target = f"{result.registered_model}@champion"
    prefix = "[dry run] " if dry_run else ""
    if decision.promote:
        click.echo(f"{prefix}{verb} {target} to {version} (run {candidate.run_id}): {decision.reason}")
    else:
        where = f"v{result.champion_before.version}" if result.champion_before else "none"
        click.echo(f"{prefix}{verb} {target} at {where}; {version} (run {candidate.run_id}) "
                   f"not promoted: {decision.reason}")
    if dry_run and result.rejected:
        click.echo("not candidates:")
        for run_id, reason in result.rejected:
            click.echo(f"  run {run_id}: {reason}")
    elif result.rejected:
        click.echo(f"({len(result.rejected)} other finished runs are not candidates; --dry-run says why)")
    if result.locks_broken:
        click.echo(f"broke {result.locks_broken} stale promotion lock(s) left by a crashed promotion")
    if result.lock_wait_s and result.lock_wait_s >= 1.0:
        click.echo(f"waited {result.lock_wait_s:.1f} s for another promotion of {result.registered_model!r}")
