"""Promotion against the MLflow tracking server: the thin adapter around `decision.py`.

Reads (runs, their logged models, the champion) become `ModelRecord`s and `Candidate`s; the pure
`rank` and `should_promote` decide; the writes (register, tags, descriptions, aliases) happen under
`<name>.promotion-lock` after every read has succeeded, so a registry error before them changes
nothing. Only "does not exist" reads as absence (errors.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from jobs import tags as T
from jobs.promotion.decision import (
    AP_METRICS,
    Candidate,
    Decision,
    ModelRecord,
    PromotionRule,
    Ranking,
    assess,
    is_score,
    logged_model_id,
    rank,
    should_promote,
)
from jobs.promotion.errors import PromotionError, RegistryError, already_exists, get_or_none, registry_call
from jobs.promotion.lock import LockPolicy, check_held, promotion_lock
from jobs.preflight import check_tracking_server
from jobs.promotion.notes import model_description, version_description

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"


@dataclasses.dataclass(frozen=True)
class PromotionResult:
    decision: Decision
    candidate: Candidate
    champion_before: Candidate | None
    registered_model: str
    version: str | None
    """The candidate's model version (None on a dry run that would register a new one)."""
    dry_run: bool
    experiment: str | None = None
    rejected: tuple[tuple[str, str], ...] = ()
    """(run id, why it is not a candidate) for the experiment's other finished runs."""
    lock_wait_s: float | None = None
    locks_broken: int = 0


def _every(search: Callable[..., Any], *args: Any, **kwargs: Any) -> list:
    """All pages of an MlflowClient search."""
    items, token = [], None
    while True:
        page = search(*args, page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


# ---------------------------------------------------------------- reads
def find_experiment(client, name: str):
    """The experiment named `name`; the error lists the experiments that exist."""
    with registry_call(f"look up experiment {name!r}"):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment
        names = sorted(e.name for e in _every(client.search_experiments) if e.name != "Default")
    raise PromotionError(f"no MLflow experiment named {name!r}; experiments there: {', '.join(names) or 'none'}. "
                         "Choose one with `isrn promote SPEC` (the spec's tracking.experiment) "
                         "or `isrn promote --experiment NAME`")


def latest_training_run(client):
    """(run, experiment name) of the most recently finished training run on the server, or None."""
    with registry_call("search the most recently finished training run"):
        ids = [e.experiment_id for e in _every(client.search_experiments)]
        runs = client.search_runs(ids, f"attributes.status = 'FINISHED' and tags.`{T.SPEC_FINGERPRINT}` LIKE '%'",
                                  order_by=["attributes.end_time DESC"], max_results=50) if ids else []
        for run in runs:
            if run.data.tags.get(T.TUNE_ROLE) != "study":  # a study's parent run trains nothing
                return run, client.get_experiment(run.info.experiment_id).name
    return None


def _model_record(run, model) -> ModelRecord:
    """The record of `run` and its LoggedModel (None: not found)."""
    metrics: dict[str, float] = {}
    manifests: dict[str, str] = {}
    for metric in sorted(model.metrics or [], key=lambda m: (m.step, m.timestamp)) if model else []:
        metrics[metric.key] = float(metric.value)  # the latest point of each key
        if metric.dataset_digest:
            manifests[metric.key] = metric.dataset_digest
    where = {**(model.tags if model else {}), **(model.params if model else {})}

    def whole(key: str) -> int | None:
        value = where.get(key, run.data.metrics.get(key))
        return None if value is None else int(float(value))

    return ModelRecord(run_id=run.info.run_id, val_manifest=run.data.tags.get(T.VAL_MANIFEST),
                       model_uri=run.data.tags.get(T.MODEL_URI), model_metrics=metrics if model else None,
                       metric_manifests=manifests, best_epoch=whole("best_epoch"), best_step=whole("best_step"),
                       end_time=run.info.end_time or 0)


def experiment_records(client, experiment_id: str, study: str | None) -> list[tuple[Any, ModelRecord]]:
    """(run, record) of each finished run of the experiment (of `study`'s trials when given)."""
    query = "attributes.status = 'FINISHED'" + (f" and tags.`{T.STUDY}` = '{study}'" if study else "")
    with registry_call(f"search the finished runs of experiment {experiment_id}"):
        runs = [r for r in _every(client.search_runs, [experiment_id], query, max_results=1000)
                if r.data.tags.get(T.TUNE_ROLE) != "study"]
        models = {m.model_id: m for m in _every(client.search_logged_models, [experiment_id], max_results=100)}
    return [(run, _model_record(run, models.get(logged_model_id(run.data.tags.get(T.MODEL_URI)))))
            for run in runs]


def run_record(client, run_id: str) -> tuple[Any, ModelRecord]:
    """(run, record) of one run, for `isrn promote --run`."""
    run = get_or_none(lambda: client.get_run(run_id), f"read run {run_id}")
    if run is None:
        raise PromotionError(f"no run {run_id} on the tracking server")
    model_id = logged_model_id(run.data.tags.get(T.MODEL_URI))
    model = get_or_none(lambda: client.get_logged_model(model_id), f"read logged model {model_id}") if model_id else None
    return run, _model_record(run, model)


def version_candidate(version, metric: str) -> Candidate:
    """A registered version as the decision sees it, from the tags promotion wrote on it."""
    tags = version.tags

    def number(key: str) -> float | None:
        return float(tags[key]) if key in tags else None

    scores = {k.removeprefix(T.METRIC_PREFIX): float(v) for k, v in tags.items()
              if k.startswith(T.METRIC_PREFIX) and is_score(k.removeprefix(T.METRIC_PREFIX))}
    epoch, step = number(T.BEST_EPOCH), number(T.BEST_STEP)
    return Candidate(run_id=tags.get(T.RUN_ID, version.run_id or ""), metric=number(T.metric_tag(metric)),
                     val_manifest=tags.get(T.VAL_MANIFEST), version=str(version.version),
                     model_uri=tags.get(T.MODEL_URI, version.source), scores=scores,
                     best_epoch=None if epoch is None else int(epoch), best_step=None if step is None else int(step))


def current_champion(client, name: str, metric: str) -> Candidate | None:
    """The version behind `name@champion` (None: no such registered model, or no champion alias)."""
    model = get_or_none(lambda: client.get_registered_model(name), f"read registered model {name!r}")
    version = (model.aliases or {}).get(CHAMPION) if model else None
    if version is None:
        return None
    with registry_call(f"read {name!r} version {version} (alias {CHAMPION})"):
        return version_candidate(client.get_model_version(name, version), metric)


def version_of_run(client, name: str, run_id: str) -> str | None:
    """The newest version of `name` registered from `run_id` (None: none, or no such registered model)."""
    with registry_call(f"search the versions of {name!r} from run {run_id}"):
        versions = client.search_model_versions(f"name = '{name}' and tags.`{T.RUN_ID}` = '{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def lineage_tags(run, candidate: Candidate, metric: str) -> dict[str, str]:
    """What a model version records: the run's ids and lineage, and its model's own metrics."""
    tags = {T.RUN_ID: run.info.run_id, T.EXPERIMENT_ID: run.info.experiment_id}
    tags.update({key: value for key, value in run.data.tags.items() if key in T.LINEAGE})
    scores = {**candidate.scores, metric: candidate.metric}  # the rule's metric, should it not be an AP
    tags.update({T.metric_tag(key): repr(float(value)) for key, value in scores.items() if value is not None})
    if candidate.best_epoch is not None:
        tags[T.BEST_EPOCH] = str(candidate.best_epoch)
    if candidate.best_step is not None:
        tags[T.BEST_STEP] = str(candidate.best_step)
    return tags


# ---------------------------------------------------------------- the promotion
def _choose(client, experiment: str | None, run_id: str | None, study: str | None,
            rule: PromotionRule, name: str) -> tuple[Any, Candidate, str, Ranking | None]:
    """(run, candidate, experiment name, ranking of the experiment) for the run to promote into `name`:
    the best run evaluated on the val manifest of `name`'s champion (decision.rank)."""
    if run_id:
        run, record = run_record(client, run_id)
        outcome = assess(record, rule)
        if not isinstance(outcome, Candidate):
            raise PromotionError(f"run {run_id} is not a candidate: {outcome}")
        with registry_call(f"read experiment {run.info.experiment_id}"):
            name = client.get_experiment(run.info.experiment_id).name
        return run, outcome, name, None
    if not experiment:
        raise PromotionError("name the experiment (or a run) to promote from")
    exp = find_experiment(client, experiment)
    pairs = experiment_records(client, exp.experiment_id, study)
    scope = f"experiment {experiment!r}" + (f" (study {study!r})" if study else "")
    if not pairs:
        raise PromotionError(f"{scope} has no finished run")
    champion = current_champion(client, name, rule.metric)
    ranking = rank([record for _, record in pairs], rule,
                   champion_manifest=champion.val_manifest if champion is not None else None)
    if ranking.best is None:
        why = "\n".join(f"  run {r}: {reason}" for r, reason in ranking.rejected[:10])
        raise PromotionError(f"no finished run of {scope} is a candidate (its logged model needs its own "
                             f"{rule.metric}, measured on the champion's val manifest):\n{why}")
    run = next(r for r, record in pairs if record.run_id == ranking.best.run_id)
    return run, ranking.best, experiment, ranking


def promote(tracking_uri: str, *, experiment: str | None = None, name: str = "isrn-face",
            rule: PromotionRule = PromotionRule(), run_id: str | None = None, study: str | None = None,
            dry_run: bool = False, lock: LockPolicy = LockPolicy()) -> PromotionResult:
    """Register the best (or the given) run's logged model as a version of `name`; decide on `champion`."""
    from mlflow.tracking import MlflowClient

    check_tracking_server(tracking_uri)
    client = MlflowClient(tracking_uri)
    done: list[str] = []
    try:
        run, candidate, experiment, ranking = _choose(client, experiment, run_id, study, rule, name)
        rejected = ranking.rejected if ranking else ()
        if dry_run:
            existing = version_of_run(client, name, candidate.run_id)
            candidate = dataclasses.replace(candidate, version=existing)
            champion = current_champion(client, name, rule.metric)
            return PromotionResult(should_promote(candidate, champion, rule), candidate, champion, name, existing,
                                   True, experiment, rejected)
        with promotion_lock(client, name, lock, tracking_uri) as held:
            champion = current_champion(client, name, rule.metric)  # re-read under the lock
            candidate = dataclasses.replace(candidate, version=version_of_run(client, name, candidate.run_id))
            decision = should_promote(candidate, champion, rule)
            check_held(client, held)
            candidate = _write(client, name, run, candidate, champion, decision, rule, done)
    except RegistryError as error:
        after = (f"Done before it: {'; '.join(done)}. Run the same promotion again to finish it."
                 if done else "Nothing was changed.")
        raise PromotionError(f"promotion to {name!r} stopped: {error}. {after}") from error
    return PromotionResult(decision, candidate, champion, name, candidate.version, False, experiment, rejected,
                           held.waited_s, len(held.broken))


def _write(client, name: str, run, candidate: Candidate, champion: Candidate | None, decision: Decision,
           rule: PromotionRule, done: list[str]) -> Candidate:
    """The promotion's writes, in an order that a rerun completes; returns the candidate with its version."""
    from mlflow.exceptions import MlflowException

    note = version_description(candidate, decision, champion, rule)
    if candidate.version is None:
        try:
            client.create_registered_model(name, description=model_description(name, rule, None))
            done.append(f"created registered model {name!r}")
        except MlflowException as error:
            if not already_exists(error):
                raise RegistryError(f"create registered model {name!r}", error) from error
        with registry_call(f"register run {candidate.run_id}'s model {candidate.model_uri} as a version of {name!r}"):
            created = client.create_model_version(name, candidate.model_uri, run_id=candidate.run_id,
                                                  tags={**lineage_tags(run, candidate, rule.metric),
                                                        T.PROMOTION: decision.reason},
                                                  description=note, model_id=logged_model_id(candidate.model_uri))
        candidate = dataclasses.replace(candidate, version=str(created.version))
        done.append(f"registered version {candidate.version}")
        log.info("registered %s version %s from run %s", name, candidate.version, candidate.run_id)
    else:
        with registry_call(f"write the decision on {name!r} version {candidate.version}"):
            client.set_model_version_tag(name, candidate.version, T.PROMOTION, decision.reason)
            client.update_model_version(name, candidate.version, description=note)
        done.append(f"wrote the decision on version {candidate.version}")
    if decision.promote:  # description first: a rerun after a failure here still finds the alias to move
        with registry_call(f"move {name!r}@{CHAMPION} to version {candidate.version}"):
            client.update_registered_model(name, description=model_description(name, rule, candidate, decision.reason))
            done.append(f"described version {candidate.version} as champion on {name!r}")
            if champion is not None and champion.version:
                client.set_registered_model_alias(name, PREVIOUS, champion.version)
                done.append(f"moved @{PREVIOUS} to version {champion.version}")
            client.set_registered_model_alias(name, CHAMPION, candidate.version)
            done.append(f"moved @{CHAMPION} to version {candidate.version}")
    return candidate


def describe(result: PromotionResult) -> dict[str, Any]:
    """The outcome as JSON (`isrn promote --json`)."""
    before = result.champion_before
    return {"promote": result.decision.promote, "reason": result.decision.reason, "model": result.registered_model,
            "version": result.version, "run_id": result.candidate.run_id, "experiment": result.experiment,
            "model_uri": result.candidate.model_uri, "metrics": dict(result.candidate.scores),
            "champion_before": before.version if before else None, "dry_run": result.dry_run,
            "not_candidates": [{"run_id": r, "reason": why} for r, why in result.rejected],
            "lock_wait_s": result.lock_wait_s, "locks_broken": result.locks_broken}
