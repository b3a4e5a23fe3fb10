"""The spec's `tune.space` in Ray Tune's vocabulary, and a trial's values applied to the spec.

    space = param_space(spec.tune)                 # {"optim.lr": tune.loguniform(1e-3, 1e-1), ...}
    trial_spec = apply_trial_config(spec, {"optim.lr": 0.0123, "model.norm": "gn"})

Keys stay dotted spec fields; a trial's config is applied as `--set FIELD=VALUE` overrides, so a
sampled value goes through the same validation as a command-line override and the trial is an
ordinary training spec (its `tune:` section dropped).
"""

from __future__ import annotations

import json
from typing import Any

from jobs.errors import ConfigError
from jobs.spec import JobSpec, load_spec
from jobs.tune.config import TuneConfig


def domain(field: str, sampler: str, args: list[Any]):
    """One Ray Tune search domain: `tune.<sampler>(*args)`, or `tune.choice(values)` for lists."""
    from ray import tune

    if sampler in ("choice", "grid_search"):
        return getattr(tune, sampler)(list(args))
    try:
        return getattr(tune, sampler)(*args)
    except (TypeError, ValueError, AssertionError) as error:
        raise ConfigError(f"tune.space.{field}: {sampler}{tuple(args)}: {error}") from None


def param_space(tune_spec: TuneConfig) -> dict[str, Any]:
    """Tune's `param_space`: dotted field -> domain (flat: Optuna and the trials table want flat keys)."""
    return {field: domain(field, *next(iter(d.items()))) for field, d in tune_spec.space.items()}


def overrides_of(config: dict[str, Any]) -> list[str]:
    """A trial's config as `FIELD=VALUE` overrides (values written as JSON, which YAML reads back)."""
    return [f"{field}={json.dumps(_plain(value))}" for field, value in sorted(config.items())]


def apply_trial_config(spec: JobSpec, config: dict[str, Any]) -> JobSpec:
    """The training spec of one trial: `spec` without its tune section, with `config` set."""
    base = spec.to_dict()
    base["tune"] = None
    try:
        return load_spec(base, overrides_of(config))
    except ConfigError as error:
        raise ConfigError(f"tune.space: the trial values {config} make an invalid spec: {error}") from None


def check_space(spec: JobSpec) -> None:
    """Fail at load if a searched field does not exist or one of its values cannot be a valid spec.

    Every listed value of a choice and both bounds of a range are tried (one at a time, the other
    fields at the spec's values), so `tune.space.model.nrom` or `model.norm: {choice: [gn, ln]}`
    fails before any trial starts.
    """
    if spec.tune is None:
        raise ConfigError(f"spec {spec.name!r} has no tune: section (see jobs/specs/tune-smoke.yaml)")
    known = spec.flat_params()
    for field, d in spec.tune.space.items():
        if field not in known:
            raise ConfigError(f"tune.space.{field}: no such spec field")
        (sampler, args), = d.items()
        if sampler in ("choice", "grid_search"):
            candidates = args
        elif "randn" in sampler:
            candidates = args[:1]  # the mean; a normal has no bounds to try
        else:
            candidates = args[:2]  # (randint's upper bound is exclusive but still a valid int here)
        for value in candidates:
            apply_trial_config(spec, {field: value})
        domain(field, sampler, args)


def searched_values(spec: JobSpec, config: dict[str, Any]) -> dict[str, str]:
    """The trial's searched values as MLflow params (`tune.optim.lr` -> "0.0123")."""
    return {f"tune.{field}": json.dumps(_plain(value)) if not isinstance(value, str) else value
            for field, value in sorted(config.items()) if spec.tune and field in spec.tune.space}


def _plain(value: Any) -> Any:
    """numpy scalars (Tune samples them) as Python values."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value
