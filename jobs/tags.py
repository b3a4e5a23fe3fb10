"""The names of the `isrn.*` tags the platform writes on MLflow runs and model versions, in one place.

Runs (training runs, Tune studies and trials) carry lineage: what ran (spec, commit), on what data
(manifest fingerprints), where (Ray run and job). Model versions copy the lineage of their run and
add the promotion's outcome. Search filters quote a tag with backticks: `tags.\\`isrn.study\\``.
"""

from __future__ import annotations

# ---- lineage of a run
GIT_COMMIT = "isrn.git_commit"
SPEC = "isrn.spec"
SPEC_FINGERPRINT = "isrn.spec_fingerprint"
TRAIN_MANIFEST = "isrn.train_manifest"
VAL_MANIFEST = "isrn.val_manifest"
WORLD_SIZE = "isrn.world_size"
RAY_RUN_NAME = "isrn.ray_run_name"
"""The Ray Train run name: the key by which a resumed run finds its MLflow run again."""
RAY_JOB_ID = "ray.job_id"
RAY_SUBMISSION_ID = "ray.submission_id"

# ---- where a run's starting weights came from (`model.init_from`)
INIT_FROM = "isrn.init_from"
"""`model.init_from` as the spec gave it (`models:/isrn-coco-pretrain@champion`)."""
INIT_FROM_VERSION = "isrn.init_from.model_version"
"""`NAME/VERSION` of the registered model version the alias named when the run started (the one loaded)."""
INIT_FROM_RUN = "isrn.init_from.run_id"
"""The MLflow run that produced that version (stage 1's run, for ISRN's stage 2)."""

# ---- what training produced
MODEL_URI = "isrn.model_uri"
BEST_CHECKPOINT = "isrn.best_checkpoint"

# ---- what happened to a run
STORAGE_OUTAGES = "isrn.storage_outages"
"""How many checkpoint-storage outages the run survived (absent: none)."""
FAULT_PLAN = "isrn.fault_plan"
"""The fault-injection plan that was active in the run (jobs/train/faults.py; a test's, never a user's)."""
SPEC_CHANGES = "isrn.spec_changes"
"""The spec fields a resume changed (`isrn train --resume RUN --allow-change`), oldest first."""

# ---- Tune studies
STUDY = "isrn.study"
TRIAL_ID = "isrn.trial_id"
TUNE_ROLE = "isrn.tune.role"
"""`study` on a study's parent run (its trials are its nested child runs)."""
TUNE_SEARCH = "isrn.tune.search"
TUNE_SCHEDULER = "isrn.tune.scheduler"
EARLY_STOPPED = "isrn.tune.early_stopped"
EPOCHS_DONE = "isrn.tune.epochs_done"
BEST_TRIAL_RUN_ID = "isrn.tune.best_run_id"
FAILED_TRIALS = "isrn.tune.failed_trials"
"""Comma-separated ids of a study's trials that crashed."""

# ---- model versions in the registry
RUN_ID = "isrn.run_id"
EXPERIMENT_ID = "isrn.experiment_id"
PROMOTION = "isrn.promotion"
METRIC_PREFIX = "isrn.metric."
"""`isrn.metric.<name>`: a metric of the version's model, copied onto the version."""
BEST_EPOCH = "isrn.best_epoch"
BEST_STEP = "isrn.best_step"
"""The epoch and step of the checkpoint whose weights the version holds."""

# ---- the promotion lock (a registered model `<name>.promotion-lock`)
LOCK_OWNER = "isrn.lock.owner"
"""`host:pid:nonce` of the promotion holding the lock; only it releases the lock."""

# ---- Ray job metadata of `isrn submit`
COMMAND = "isrn.command"

LINEAGE = (SPEC, SPEC_FINGERPRINT, TRAIN_MANIFEST, VAL_MANIFEST, GIT_COMMIT, STUDY, TRIAL_ID, MODEL_URI,
           INIT_FROM, INIT_FROM_VERSION, INIT_FROM_RUN,
           BEST_CHECKPOINT)
"""Run tags a registered model version copies from its run."""


def metric_tag(metric: str) -> str:
    """The model-version tag holding `metric` (`isrn.metric.val_ap_hard`)."""
    return METRIC_PREFIX + metric
