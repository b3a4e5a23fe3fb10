"""The names of the metrics the platform logs to MLflow and reports to Ray, in one place.

A metric name is a contract between the training loop (which logs it), Ray Tune (which schedules
on it), promotion (which compares it) and the user (who filters on it in the MLflow UI). Spelled
here once, a typo fails at import instead of logging a metric nobody reads.
"""

from __future__ import annotations

from typing import Any

from isrn_model.wider_eval import SETTINGS

# ---- evaluation: the official WIDER FACE AP of the evaluated weights
VAL_AP: dict[str, str] = {setting: f"val_ap_{setting}" for setting in SETTINGS}
"""Setting -> metric name: `val_ap_easy`, `val_ap_medium`, `val_ap_hard`."""
VAL_AP_HARD = VAL_AP["hard"]
"""What checkpoints are ranked by, Tune schedules on and promotion compares by default."""
AP_METRICS: tuple[str, ...] = tuple(VAL_AP.values())
BEST_VAL_AP: dict[str, str] = {setting: f"best_{name}" for setting, name in VAL_AP.items()}
"""On the run, after training: the AP of the checkpoint logged as the run's model."""
BREAKDOWN_SETTING = "hard"
"""The setting whose AP per face attribute and size is logged at every evaluation."""
BREAKDOWN_PREFIX = f"{VAL_AP[BREAKDOWN_SETTING]}_"
"""`val_ap_hard_<attribute>_<value>` / `val_ap_hard_size_<band>`: Hard AP of one face subset
(`isrn_model.wider_eval.subsets`), e.g. `val_ap_hard_occlusion_heavy`; a subset without a face has none."""
BEST_EPOCH = "best_epoch"
BEST_STEP = "best_step"

# ---- reports to Ray (every rank, each checkpoint)
STEP = "step"
EPOCH = "epoch"
CHECKPOINT_SCORE = "checkpoint_score"
"""Ray ranks checkpoints by this: AP Hard of the checkpoint's own weights, or `UNEVALUATED`."""
EVALUATED_EPOCH = "evaluated_epoch"
"""The epoch whose weights the reported `val_ap_*` measured (0: none yet)."""

# ---- per step (every train.log_every_steps)
LOSS = "loss"
LEARNING_RATE = "lr"
GRAD_NORM = "grad_norm"
DATA_SECONDS = "data_s"
COMPUTE_SECONDS = "compute_s"
IMAGES_PER_SECOND = "images_per_s"
SKIPPED_SAMPLES = "skipped_samples"

# ---- per epoch
EPOCH_TRAIN_SECONDS = "epoch_train_s"
EPOCH_STEPS = "epoch_steps"
PARAM_DIVERGENCE = "ddp_param_divergence"
TIME_SHARE_PREFIX = "time_share_"
"""`time_share_<part>`: the part's fraction of the epoch's wall time (see jobs/train/timing.py)."""

# ---- events
RESUMED_FROM_STEP = "resumed_from_step"
EVENT_METRICS = frozenset({RESUMED_FROM_STEP})
"""Metrics that record events, logged every time (a run resumed twice from one step says so twice)."""


def time_share(part: str) -> str:
    return f"{TIME_SHARE_PREFIX}{part}"


def breakdown_metrics(breakdown: Any) -> dict[str, float]:
    """The `val_ap_hard_<subset>` metrics of a `WiderBreakdown` (subsets without a face left out)."""
    return {name: value for name, value in breakdown.to_metrics(prefix="val_ap").items()
            if name.startswith(BREAKDOWN_PREFIX)}
