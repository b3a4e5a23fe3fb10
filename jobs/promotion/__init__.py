"""Promotion: register the best run's logged model in the MLflow registry and move `champion` if it wins.

    result = promote(tracking_uri, experiment="isrn-smoke")                 # `isrn promote smoke`
    result = promote(tracking_uri, experiment="isrn-smoke", dry_run=True)   # decision only

- `decision.py` (pure): a run is a candidate when its logged model carries its own AP
  (`val_ap_*` on the MLflow 3 LoggedModel) on the run's val manifest; `should_promote(candidate,
  champion, rule)` decides. Registry aliases, not stages: `champion` moves only if the candidate
  beats it by at least `rule.margin` on the same val manifest; the replaced champion gets `previous`.
- `registry.py`: the MLflow adapter. Every read happens before the first write, and only "does not
  exist" reads as absence (`errors.py`): any other registry error stops the promotion unchanged.
- `lock.py`: two promotions at once serialise on `<name>.promotion-lock`, a registered model that
  exists while one promotion runs; a crashed holder's lock is broken by one atomic rename.
- `notes.py` (pure): the markdown the MLflow UI shows on the registered model and each version.
"""

from jobs.promotion.decision import AP_METRICS, Candidate, Decision, ModelRecord, PromotionRule, rank, should_promote
from jobs.promotion.errors import PromotionError, RegistryError
from jobs.promotion.lock import LockPolicy, clear_lock, lock_name
from jobs.promotion.registry import (
    CHAMPION,
    PREVIOUS,
    PromotionResult,
    current_champion,
    describe,
    latest_training_run,
    promote,
)

__all__ = [
    "AP_METRICS", "CHAMPION", "PREVIOUS", "Candidate", "Decision", "LockPolicy", "ModelRecord", "PromotionError",
    "PromotionResult", "PromotionRule", "RegistryError", "clear_lock", "current_champion", "describe",
    "latest_training_run", "lock_name", "promote", "rank", "should_promote",
]
