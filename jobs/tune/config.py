"""The `tune:` section of a job spec: what to search, how to stop trials early, how many at once.

    tune:
      num_samples: 4
      metric: val_ap_hard
      search: random                     # or optuna (needs `pip install optuna`)
      scheduler: {name: asha, grace_period: 1, max_t: 3, reduction_factor: 2}
      space:                             # dotted spec fields in Ray Tune's own vocabulary
        optim.lr: {loguniform: [1.0e-3, 1.0e-1]}
        model.norm: {choice: [gn, bn, frozen_bn]}

Each trial is the spec with the sampled values applied as `--set FIELD=VALUE` overrides.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from jobs.sections import Section

DOMAINS: dict[str, int | None] = {
    # Ray Tune sampler -> number of arguments (None: a list of values)
    "uniform": 2, "quniform": 3, "loguniform": 2, "qloguniform": 3,
    "randint": 2, "qrandint": 3, "lograndint": 2, "qlograndint": 3,
    "randn": 2, "qrandn": 3, "choice": None, "grid_search": None,
}
"""Ray Tune samplers a search dimension may use, as `{sampler: [args]}` (`tune.<sampler>(*args)`)."""


class SchedulerSpec(Section):
    name: Literal["asha", "fifo"] = Field(default="asha", description="asha: early stopping; fifo: none.")
    time_attr: Literal["epoch", "training_iteration"] = Field(
        default="epoch", description="ASHA's clock: completed epochs (reports mid-epoch repeat the last one).")
    grace_period: int = Field(default=1, gt=0, description="Epochs every trial runs before it may be stopped.")
    max_t: int = Field(default=10, gt=0, description="Epochs after which ASHA stops any trial.")
    reduction_factor: float = Field(default=2.0, gt=1, description="Keep the top 1/rf at each rung.")


class TuneSpec(Section):
    num_samples: int = Field(default=8, gt=0, description="Trials (per grid point, with grid_search).")
    metric: str = Field(default="val_ap_hard", description="What the scheduler and the search maximise.")
    mode: Literal["max", "min"] = Field(default="max", description="Whether a higher metric is better.")
    search: Literal["random", "optuna"] = Field(
        default="random", description="random: Tune's variant generator; optuna: TPE (optuna must be installed).")
    seed: int | None = Field(default=0, description="Seed of the search algorithm (None: random).")
    scheduler: SchedulerSpec = Field(default=SchedulerSpec(), description="Early stopping of weak trials.")
    max_concurrent_trials: int | None = Field(
        default=None, gt=0, description="Upper bound; the cluster's CPUs and GPUs bound it anyway.")
    trial_cpus: float = Field(
        default=1.0, ge=0, description="CPUs Tune reserves for each trial's driver (the TorchTrainer.fit caller).")
    space: dict[str, dict[str, Any]] = Field(description="Dotted spec field -> {sampler: args}.")

    @field_validator("space")
    @classmethod
    def _vocabulary(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not space:
            raise ValueError("space is empty: name at least one field to search")
        for field, domain in space.items():
            if field.startswith("tune.") or field == "name":
                raise ValueError(f"space.{field}: cannot search the study's own settings")
            if len(domain) != 1:
                raise ValueError(f"space.{field}: expected one sampler like {{loguniform: [1e-3, 1e-1]}}, got {domain}")
            (sampler, args), = domain.items()
            if sampler not in DOMAINS:
                raise ValueError(f"space.{field}: unknown sampler {sampler!r}; one of {', '.join(DOMAINS)}")
            arity = DOMAINS[sampler]
            if not isinstance(args, list) or not args or (arity is not None and len(args) != arity):
                want = "a non-empty list of values" if arity is None else f"a list of {arity} numbers"
                raise ValueError(f"space.{field}: {sampler} takes {want}, got {args!r}")
        return space
