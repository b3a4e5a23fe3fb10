"""Promotion: register the best run's model in the MLflow registry and move `champion` if it wins.

    result = promote(tracking_uri, experiment="isrn-smoke")                 # `isrn promote`
    result = promote(tracking_uri, experiment="isrn-smoke", dry_run=True)   # decision only

The decision is the pure `should_promote(candidate, champion, rule)`; the rest is a thin adapter
over MlflowClient. Registry aliases, not stages: `champion` moves to the new version only if it
beats the current champion by at least `rule.margin` on the same val manifest; the champion it
replaces gets `previous`.

Two promotions at once: the registry has no compare-and-set, but creating a registered model
whose name exists fails atomically (a unique key in the tracking database). So the read of the
champion, the decision and the alias writes run while holding `<name>.promotion-lock`, a
registered model that exists only for the duration of one promotion (`promotion_lock`). The
second promotion waits, then re-reads the champion the first one set and decides against it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
LOCK_SUFFIX = ".promotion-lock"
LOCK_STALE_S = 600.0
"""A lock older than this is taken to belong to a crashed promotion and is broken."""


class PromotionError(RuntimeError):
    """A promotion that cannot proceed; the message says what is missing and where."""


# ---------------------------------------------------------------- the decision (pure)
@dataclasses.dataclass(frozen=True)
class Candidate:
    """A run's model as the decision sees it (the champion is one too)."""

    run_id: str
    metric: float | None
    val_manifest: str | None
    version: str | None = None


@dataclasses.dataclass(frozen=True)
class PromotionRule:
    metric: str = "val_ap_hard"
    margin: float = 0.0
    """The candidate must beat the champion by at least this (and strictly)."""
    higher_is_better: bool = True


@dataclasses.dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def should_promote(candidate: Candidate, champion: Candidate | None, rule: PromotionRule) -> Decision:
    """Whether `candidate` should take the champion alias from `champion` (None: there is none)."""
    m = rule.metric
    if candidate.metric is None or math.isnan(candidate.metric):
        return Decision(False, f"candidate run {candidate.run_id} has no {m}")
    if champion is None:
        return Decision(True, f"no champion yet; candidate {m}={candidate.metric:.4f}")
    where = f"champion v{champion.version}" if champion.version else "champion"
    if champion.run_id == candidate.run_id:
        return Decision(False, f"run {candidate.run_id} is already the {where}")
    if champion.metric is None or math.isnan(champion.metric):
        return Decision(True, f"{where} has no recorded {m}; candidate {m}={candidate.metric:.4f}")
    if candidate.val_manifest != champion.val_manifest:
        return Decision(False, f"not comparable: candidate was validated on manifest {candidate.val_manifest}, "
                               f"{where} on {champion.val_manifest}")
    gain = candidate.metric - champion.metric if rule.higher_is_better else champion.metric - candidate.metric
    if gain > 0 and gain >= rule.margin - 1e-12:
        return Decision(True, f"candidate {m}={candidate.metric:.4f} beats {where}'s {champion.metric:.4f} "
                              f"by {gain:.4f} (margin {rule.margin:g})")
    return Decision(False, f"candidate {m}={candidate.metric:.4f} does not beat {where}'s "
                           f"{champion.metric:.4f} by the margin {rule.margin:g}")


# ---------------------------------------------------------------- the MLflow adapter
@dataclasses.dataclass(frozen=True)
class PromotionResult:
    decision: Decision
    candidate: Candidate
    champion_before: Candidate | None
    registered_model: str
    version: str | None
    """The candidate's model version (None on a dry run that would register a new one)."""
    dry_run: bool


def check_registry(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast and clearly when the tracking server does not answer (the client retries for minutes)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as error:
        raise PromotionError(f"MLflow registry at {tracking_uri} is unreachable: {error}") from None


def best_run(client, experiment: str, metric: str, *, study: str | None = None, higher_is_better: bool = True):
    """The finished run of `experiment` (of `study`'s trials when given) with the best `metric` and a model."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PromotionError(f"no MLflow experiment named {experiment!r}")
    query = "attributes.status = 'FINISHED'"
    if study:
        query += f" and tags.`isrn.study` = '{study}'"
    runs = [r for r in client.search_runs([exp.experiment_id], query, max_results=5000)
            if r.data.tags.get("isrn.tune.role") != "study"]
    scope = f"experiment {experiment!r}" + (f" (study {study!r})" if study else "")
    if not runs:
        raise PromotionError(f"{scope} has no finished run")
    scored = [r for r in runs if metric in r.data.metrics]
    if not scored:
        seen = sorted({k for r in runs for k in r.data.metrics})
        raise PromotionError(f"no finished run of {scope} has metric {metric!r} (metrics seen: {', '.join(seen) or 'none'})")
    with_model = [r for r in scored if r.data.tags.get("isrn.model_uri")]
    if not with_model:
        raise PromotionError(f"no finished run of {scope} with {metric!r} has a logged model (tag isrn.model_uri); "
                             "train with tracking.log_model: true")
    sign = 1 if higher_is_better else -1
    return max(with_model, key=lambda r: (sign * r.data.metrics[metric], r.info.end_time or 0))


def candidate_of(run, metric: str, version: str | None = None) -> Candidate:
    return Candidate(run_id=run.info.run_id, metric=run.data.metrics.get(metric),
                     val_manifest=run.data.tags.get("isrn.val_manifest"), version=version)


def current_champion(client, name: str, metric: str) -> Candidate | None:
    """The version behind `name@champion` as a Candidate, from its lineage tags (None: no champion)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    value = version.tags.get(f"isrn.metric.{metric}")
    if value is None and version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(metric)
    return Candidate(run_id=version.tags.get("isrn.run_id", version.run_id or ""),
                     metric=None if value is None else float(value),
                     val_manifest=version.tags.get("isrn.val_manifest"), version=str(version.version))


def lineage_tags(run) -> dict[str, str]:
    """What a model version records of its run: ids, fingerprints, metrics and commit."""
    tags = {"isrn.run_id": run.info.run_id, "isrn.experiment_id": run.info.experiment_id}
    for key, value in run.data.tags.items():
        if key in ("isrn.spec", "isrn.spec_fingerprint", "isrn.train_manifest", "isrn.val_manifest",
                   "isrn.git_commit", "isrn.study", "isrn.trial_id", "isrn.model_uri", "isrn.best_checkpoint"):
            tags[key] = value
    for key, value in run.data.metrics.items():
        if key.startswith("val_ap_"):
            tags[f"isrn.metric.{key}"] = repr(float(value))
    return tags


@contextlib.contextmanager
def promotion_lock(client, name: str, timeout_s: float = 120.0, poll_s: float = 0.5) -> Iterator[str]:
    """Hold `<name>.promotion-lock` (create-if-absent is atomic in the registry); yields the owner token."""
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.create_registered_model(lock, tags={"owner": token, "acquired_at": repr(time.time())},
                                           description=f"held while a promotion of {name} runs; deleted after")
            break
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code) and "already exists" not in str(error):
                raise
        _break_if_stale(client, lock)
        if time.monotonic() > deadline:
            raise PromotionError(f"another promotion of {name!r} holds {lock!r} for over {timeout_s:.0f} s")
        time.sleep(poll_s)
    try:
        yield token
    finally:
        client.delete_registered_model(lock)


def _break_if_stale(client, lock: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_registered_model(lock)
    except MlflowException:
        return  # released meanwhile
    acquired = float(held.tags.get("acquired_at", "inf"))
    if time.time() - acquired > LOCK_STALE_S:
        log.warning("breaking stale promotion lock %s held by %s", lock, held.tags.get("owner"))
        with contextlib.suppress(MlflowException):
            client.delete_registered_model(lock)


def _version_of_run(client, name: str, run_id: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    mine = [v for v in versions if v.tags.get("isrn.run_id") == run_id]
    return str(max(int(v.version) for v in mine)) if mine else None


def promote(tracking_uri: str, *, experiment: str, name: str = "isrn-face", rule: PromotionRule = PromotionRule(),
            run_id: str | None = None, study: str | None = None, dry_run: bool = False) -> PromotionResult:
    """Register the best (or the given) run's model as a version of `name` and decide on `champion`."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_registry(tracking_uri)
    client = MlflowClient(tracking_uri)
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            raise PromotionError(f"run {run_id}: {error.message}") from None
        if run.data.tags.get("isrn.model_uri") is None:
            raise PromotionError(f"run {run_id} has no logged model (tag isrn.model_uri)")
    else:
        run = best_run(client, experiment, rule.metric, study=study, higher_is_better=rule.higher_is_better)
    if dry_run:
        existing = _version_of_run(client, name, run.info.run_id)
        candidate = candidate_of(run, rule.metric, existing)
        champion = current_champion(client, name, rule.metric)
        return PromotionResult(should_promote(candidate, champion, rule), candidate, champion, name, existing, True)

    with promotion_lock(client, name):
        version = _version_of_run(client, name, run.info.run_id)
        if version is None:
            mlflow.set_tracking_uri(tracking_uri)
            registered = mlflow.register_model(run.data.tags["isrn.model_uri"], name, tags=lineage_tags(run))
            version = str(registered.version)
            log.info("registered %s version %s from run %s", name, version, run.info.run_id)
        candidate = candidate_of(run, rule.metric, version)
        champion = current_champion(client, name, rule.metric)  # re-read under the lock
        decision = should_promote(candidate, champion, rule)
        client.set_model_version_tag(name, version, "isrn.promotion", decision.reason)
        if decision.promote:
            if champion is not None and champion.version:
                client.set_registered_model_alias(name, PREVIOUS, champion.version)
            client.set_registered_model_alias(name, CHAMPION, version)
    return PromotionResult(decision, candidate, champion, name, version, False)


def describe(result: PromotionResult) -> dict[str, Any]:
    return {"promote": result.decision.promote, "reason": result.decision.reason, "model": result.registered_model,
            "version": result.version, "run_id": result.candidate.run_id, "dry_run": result.dry_run}
