"""Which run a job writes, and what a resumed run may change: pure rules, no MLflow or storage here.

    name = new_run_name(spec)                                # smoke-20261129-101500-3fa9c1
    check_run_name("smoke-retry-1")                          # ConfigError for a name storage paths cannot hold
    changes = resume_changes(started_spec, spec, run="R", allow_change=True)   # [] or the accepted changes

A run is resumed with the spec it was started with. `CHANGEABLE` lists the fields a deliberate
resume (`--allow-change`) may change: how long it trains, how often it evaluates, logs and
checkpoints, its timeouts and failure budget, whether it logs a model. Everything else, the model,
its losses and post-processing, the data and its loading, the optimiser and its schedule, the batch
and the workers, never changes within a run: its checkpoints and metrics would no longer describe
one training. Changing `train.epochs` moves the learning-rate schedule's milestones and the cosine's
end, which are fractions of the whole run's steps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import secrets
from typing import Any

from jobs.errors import ConfigError
from jobs.spec import JobSpec, flatten

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""A run name is a storage folder, an MLflow run name and a search-filter value: no slash, no quote."""

CHANGEABLE = (
    "train.epochs", "train.log_every_steps",
    "eval.every_epochs", "eval.image_grid",
    "checkpoint.every_steps", "checkpoint.keep", "checkpoint.lease_timeout_s",
    "scaling.max_failures", "scaling.collective_timeout_s", "scaling.resources_timeout_s",
    "scaling.storage_outage_timeout_s",
    "tracking.log_model", "tracking.registered_model",
)
"""Spec fields `isrn train --resume RUN --allow-change` accepts a change of (see the module docstring)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_run_name(spec: JobSpec) -> str:
    """`<spec>-<UTC second>-<6 random hex digits>`: sorts by start time, and two jobs started in the same
    second (two `isrn submit` from a script) still get two runs (2^24 suffixes a second)."""
    return f"{spec.name}-{utc_now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_run_name(name: str, flag: str = "--run-name") -> str:
    if not RUN_NAME.match(name):
        raise ConfigError(f"{flag} {name!r}: a run name is 1 to 128 letters, digits, '.', '_' or '-', starting "
                          "with a letter or digit (it names the run's storage folder and its MLflow run)")
    return name


def spec_differences(started: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted field, value in `started`, value in `now`) for every leaf field that differs, by field;
    a field one side lacks has the value None there."""
    before, after = flatten(started), flatten(now)
    return [(field, before.get(field), after.get(field)) for field in sorted(set(before) | set(after))
            if _canonical(before.get(field)) != _canonical(after.get(field))]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def describe_differences(differences: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {field}: {_canonical(old)} -> {_canonical(new)}" for field, old, new in differences)


def keep_pinned_init_from(spec: JobSpec, started: dict[str, Any]) -> JobSpec:
    """`spec` with the resumed run's own `model.init_from` when the run pinned the alias `spec` names.

    A run records `models:/NAME@ALIAS` as the version the alias named when it started
    (`models:/NAME/VERSION`, jobs/lineage.py). The alias may have moved since; a resumed run loads
    its checkpoint, not those weights, and keeps the version it records.
    """
    uri, pinned = spec.model.init_from or "", ((started.get("model") or {}).get("init_from") or "")
    name, _, alias = uri.removeprefix("models:/").partition("@")
    if not (uri.startswith("models:/") and alias and pinned.startswith(f"models:/{name}/")):
        return spec
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, init_from=pinned))


def resume_changes(started: dict[str, Any], spec: JobSpec, *, run: str, allow_change: bool
                   ) -> list[tuple[str, Any, Any]]:
    """The changes a resume of run `run` (started with the resolved spec `started`, the latest accepted)
    makes with `spec`; ConfigError when it changes a field that never changes, or any field without
    `allow_change`. Returns [] for the same spec."""
    differences = spec_differences(started, spec.to_dict())
    if not differences:
        return []
    fixed = [d for d in differences if d[0] not in CHANGEABLE]
    if fixed:
        raise ConfigError(
            f"run {run!r} was started with another spec; these fields never change within a run (run's value -> "
            f"this spec's):\n{describe_differences(fixed)}\nResume with the run's values (`--set FIELD=VALUE`), "
            f"or start a new run (without --resume), with `--set model.init_from=...` to start from its weights")
    if not allow_change:
        raise ConfigError(
            f"run {run!r} was started with another spec (run's value -> this spec's):\n"
            f"{describe_differences(differences)}\nPass --allow-change to resume with these values (a resume may "
            f"change {', '.join(CHANGEABLE)}), or resume with the run's values (`--set FIELD=VALUE`)")
    return differences
