"""The promotion decision, pure: which runs are candidates, which is best, and whether it takes `champion`.

A candidate is a run's *logged model* scored by its own metrics: the AP that training measured on
the weights it logged (`val_ap_easy/medium/hard` on the MLflow 3 LoggedModel), on the val manifest
the run names. A run's last logged `val_ap_hard` is not used: it may belong to other weights.
Nothing here talks to MLflow; `registry.py` builds the `ModelRecord`s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from jobs.metrics import AP_METRICS, BREAKDOWN_PREFIX, VAL_AP_HARD
from jobs.tags import MODEL_URI, VAL_MANIFEST

__all__ = ["AP_METRICS", "Candidate", "Decision", "ModelRecord", "PromotionRule", "rank", "should_promote"]


def is_score(metric: str) -> bool:
    """Whether a logged model's metric is one promotion copies and shows: an AP, or a subset's Hard AP."""
    return metric in AP_METRICS or metric.startswith(BREAKDOWN_PREFIX)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A run's model as the decision sees it (the champion is one too)."""

    run_id: str
    metric: float | None
    """The rule's metric of the model's own weights."""
    val_manifest: str | None
    version: str | None = None
    model_uri: str | None = None
    scores: Mapping[str, float] = dataclasses.field(default_factory=dict, hash=False)
    """The model's own `AP_METRICS` that were logged, and its Hard AP per face subset
    (`val_ap_hard_<subset>`): for the descriptions' tables and the version tags."""
    best_epoch: int | None = None
    best_step: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromotionRule:
    metric: str = VAL_AP_HARD
    """A metric of the logged model (not of the run)."""
    margin: float = 0.0
    """The candidate must beat the champion by at least this (and strictly)."""
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("PromotionRule.metric: empty metric name")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"PromotionRule.margin: {self.margin} is not a finite number >= 0")


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


# ---------------------------------------------------------------- which runs are candidates
@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """What the tracking server holds about one finished run and the model it logged."""

    run_id: str
    val_manifest: str | None
    """The run's val manifest fingerprint (tag `jobs.tags.VAL_MANIFEST`)."""
    model_uri: str | None
    """The run's logged model (tag `jobs.tags.MODEL_URI`), `models:/m-…` for an MLflow 3 LoggedModel."""
    model_metrics: Mapping[str, float] | None
    """The LoggedModel's own metrics; None when no LoggedModel of that id was found."""
    metric_manifests: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)
    """Metric name -> the val manifest it was measured on, for metrics logged with a dataset digest."""
    best_epoch: int | None = None
    best_step: int | None = None
    end_time: int = 0
    """Milliseconds; among equal scores the run that finished last wins."""

    @property
    def model_id(self) -> str | None:
        return logged_model_id(self.model_uri)


def logged_model_id(model_uri: str | None) -> str | None:
    """`m-…` of a `models:/m-…` URI (an MLflow 3 LoggedModel); None for any other URI."""
    if model_uri and model_uri.startswith("models:/m-") and "/" not in model_uri[len("models:/"):]:
        return model_uri[len("models:/"):]
    return None


def assess(record: ModelRecord, rule: PromotionRule) -> Candidate | str:
    """The run's candidate, or why it is not one (a sentence for `isrn promote --dry-run`)."""
    m = rule.metric
    if not record.model_uri:
        return f"no logged model (tag {MODEL_URI}): train with tracking.log_model: true"
    if record.model_id is None:
        return (f"its model {record.model_uri} is not an MLflow 3 logged model (models:/m-…), "
                "which carries its own metrics")
    if record.model_metrics is None:
        return f"its logged model {record.model_id} was not found on the tracking server"
    if m not in record.model_metrics:
        have = ", ".join(sorted(record.model_metrics)) or "none"
        return (f"its logged model {record.model_id} has no {m} of its own (its metrics: {have}); "
                "the run's own val_ap_* may belong to other weights, so it is not compared")
    value = record.model_metrics[m]
    if math.isnan(value):
        return f"its logged model {record.model_id} has {m} = NaN"
    if not record.val_manifest:
        return f"no val manifest (tag {VAL_MANIFEST}): its AP cannot be compared with the champion's"
    measured_on = record.metric_manifests.get(m)
    if measured_on is not None and measured_on != record.val_manifest:
        return (f"its logged model's {m} was measured on val manifest {measured_on}, "
                f"but the run validated on {record.val_manifest}")
    return Candidate(run_id=record.run_id, metric=value, val_manifest=record.val_manifest, model_uri=record.model_uri,
                     scores={k: v for k, v in record.model_metrics.items() if is_score(k)},
                     best_epoch=record.best_epoch, best_step=record.best_step)


@dataclasses.dataclass(frozen=True)
class Ranking:
    best: Candidate | None
    candidates: tuple[Candidate, ...]
    rejected: tuple[tuple[str, str], ...]
    """(run id, why it is not a candidate), in the order the records came."""


def rank(records: Iterable[ModelRecord], rule: PromotionRule, champion_manifest: str | None = None) -> Ranking:
    """The best candidate by the rule's metric (ties: the run that finished last) and the runs left out.

    APs compare only on one val set: candidates are the runs evaluated on `champion_manifest` (the
    champion's val manifest), or with no champion on the newest one (that of the candidate that
    finished last). The others are left out with the manifest they were evaluated on: the best AP
    over every manifest would be a winner the champion cannot be compared with, hiding a comparable
    run that beats it.
    """
    scored: list[tuple[ModelRecord, Candidate]] = []
    rejected: list[tuple[str, str]] = []
    for record in records:
        outcome = assess(record, rule)
        if isinstance(outcome, Candidate):
            scored.append((record, outcome))
        else:
            rejected.append((record.run_id, outcome))
    if champion_manifest is not None:
        reference, whose = champion_manifest, "the champion's"
    else:
        newest = max(scored, key=lambda pair: pair[0].end_time, default=None)
        reference = newest[1].val_manifest if newest else None
        whose = "the newest (no champion yet: that of the candidate that finished last)"
    comparable = [pair for pair in scored if pair[1].val_manifest == reference]
    rejected += [(candidate.run_id, f"evaluated on val manifest {candidate.val_manifest}, not on {whose} "
                                    f"{reference}: its AP is not comparable")
                 for _, candidate in scored if candidate.val_manifest != reference]
    scored = comparable
    sign = 1.0 if rule.higher_is_better else -1.0
    best = max(scored, key=lambda pair: (sign * pair[1].metric, pair[0].end_time), default=None)
    return Ranking(best=best[1] if best else None, candidates=tuple(c for _, c in scored), rejected=tuple(rejected))
