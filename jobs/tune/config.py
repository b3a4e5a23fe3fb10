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

from isrn_model.section import Section, config_section

DOMAINS: dict[str, int | None] = {
    # Ray Tune sampler -> number of arguments (None: a list of values)
    "uniform": 2, "quniform": 3, "loguniform": 2, "qloguniform": 3,
    "randint": 2, "qrandint": 3, "lograndint": 2, "qlograndint": 3,
    "randn": 2, "qrandn": 3, "choice": None, "grid_search": None,
}
"""Ray Tune samplers a search dimension may use, as `{sampler: [args]}` (`tune.<sampler>(*args)`)."""


@config_section
class SchedulerConfig(Section):
    """How weak trials stop early (`tune.scheduler`)."""

    name: Literal["asha", "fifo"] = "asha"
    """asha: early stopping; fifo: none."""
    time_attr: Literal["epoch", "training_iteration"] = "epoch"
    """ASHA's clock: completed epochs (reports mid-epoch repeat the last one)."""
    grace_period: int = Field(default=1, gt=0)
    """Epochs every trial runs before it may be stopped."""
    max_t: int = Field(default=10, gt=0)
    """Epochs after which ASHA stops any trial."""
    reduction_factor: float = Field(default=2.0, gt=1)
    """Keep the top 1/rf at each rung."""


@config_section
class TuneConfig(Section):
    """A Ray Tune study of the spec (`tune:`)."""

    space: dict[str, dict[str, Any]]
    """Dotted spec field -> {sampler: args}."""
    num_samples: int = Field(default=8, gt=0)
    """Trials (per grid point, with grid_search)."""
    metric: str = "val_ap_hard"
    """What the scheduler and the search maximise."""
    mode: Literal["max", "min"] = "max"
    """Whether a higher metric is better."""
    search: Literal["random", "optuna"] = "random"
    """random: Tune's variant generator; optuna: TPE (optuna must be installed)."""
    seed: int | None = 0
    """Seed of the search algorithm (None: random)."""
    scheduler: SchedulerConfig = SchedulerConfig()
    """Early stopping of weak trials."""
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    """Upper bound; the cluster's CPUs and GPUs bound it anyway."""
    trial_cpus: float = Field(default=1.0, ge=0)
    """CPUs Tune reserves for each trial's driver (the TorchTrainer.fit caller)."""

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
