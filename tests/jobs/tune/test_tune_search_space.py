"""The tune: section, its Tune search space, trial overrides and the concurrency bound (no Ray cluster)."""

from __future__ import annotations

import pytest

from jobs.errors import ConfigError
from jobs.spec import load_spec
from jobs.tune.search_space import apply_trial_config, check_space, overrides_of, param_space, searched_values
from jobs.tune.study import build_scheduler, build_search, max_concurrent_trials


def spec_with(space: dict, **tune) -> dict:
    raw = load_spec("tune-smoke").to_dict()
    raw["tune"] = {**raw["tune"], "space": space, **tune}
    return raw


def test_tune_smoke_spec_is_valid() -> None:
    spec = load_spec("tune-smoke")
    check_space(spec)
    # 2 trials: one sample per point of a 2-point grid whose second point (score threshold 0.99)
    # leaves AP 0 at the rung, so ASHA stops it every time
    assert spec.tune is not None and spec.tune.num_samples == 1
    assert spec.tune.space["inference.score_threshold"] == {"grid_search": [0.001, 0.99]}
    assert spec.tune.scheduler.name == "asha" and spec.tune.scheduler.grace_period == 1


def test_param_space_uses_tune_domains() -> None:
    from ray.tune.search.sample import Categorical, Float

    space = param_space(load_spec("tune-smoke").tune)
    assert isinstance(space["optim.lr"], Float) and isinstance(space["model.norm"], Categorical)
    assert space["model.norm"].categories == ["gn", "bn", "frozen_bn"]
    lr = [space["optim.lr"].sample() for _ in range(50)]
    assert all(1e-3 <= v <= 5e-2 for v in lr)


def test_trial_config_applies_as_overrides() -> None:
    spec = load_spec("tune-smoke")
    config = {"optim.lr": 0.0123, "model.norm": "frozen_bn"}
    assert overrides_of(config) == ['model.norm="frozen_bn"', "optim.lr=0.0123"]
    trial = apply_trial_config(spec, config)
    assert trial.optim.lr == 0.0123 and trial.model.norm == "frozen_bn"
    assert trial.tune is None and trial.name == spec.name
    assert searched_values(spec, config) == {"tune.model.norm": "frozen_bn", "tune.optim.lr": "0.0123"}


@pytest.mark.parametrize("space, message", [
    ({"optim.lrr": {"uniform": [0.1, 0.2]}}, "tune.space.optim.lrr: no such spec field"),
    ({"model.norm": {"choice": ["gn", "ln"]}}, "model.norm"),
    ({"optim.lr": {"uniform": [-1, 0.1]}}, "optim.lr"),
])
def test_bad_space_fails_naming_the_field(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        check_space(load_spec(spec_with(space)))


@pytest.mark.parametrize("domain, message", [
    ({"loguniform": [1e-3]}, "loguniform takes a list of 2 numbers"),
    ({"lognormal": [1, 2]}, "unknown sampler 'lognormal'"),
    ({"uniform": [0, 1], "choice": [1]}, "expected one sampler"),
])
def test_bad_vocabulary_fails_at_load(domain: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec(spec_with({"optim.lr": domain}))


@pytest.mark.parametrize("cpus, workers, cpus_per_worker, trial_cpus, expected", [
    (2, 2, 0.5, 1, 1),    # 1 + 2 × 0.5 = 2 CPUs a trial: one at a time on 2 CPUs
    (8, 2, 1, 1, 2),      # 3 CPUs a trial: floor(8 / 3) = 2
    (16, 2, 1, 1, 4),     # 5 would fit, num_samples = 4 caps it
    (64, 2, 0.5, 0, 4),
])
def test_concurrency_bounded_by_cluster(cpus, workers, cpus_per_worker, trial_cpus, expected) -> None:
    spec = load_spec("tune-smoke", [f"scaling.num_workers={workers}", f"scaling.cpus_per_worker={cpus_per_worker}",
                                    f"tune.trial_cpus={trial_cpus}", "tune.num_samples=4"])
    assert max_concurrent_trials(spec, [{"CPU": cpus}]) == expected


def test_infeasible_trial_is_refused() -> None:
    spec = load_spec("tune-smoke", ["scaling.cpus_per_worker=1"])  # 1 + 2 × 1 = 3 CPUs > 2
    with pytest.raises(ConfigError, match="a trial needs 3 CPUs"):
        max_concurrent_trials(spec, [{"CPU": 2}])


def test_concurrency_packs_trials_per_node() -> None:
    # A trial: driver 1 CPU + 2 workers × 1 CPU = 3 CPUs. Four nodes of 2 CPUs: 8 one-CPU slots, so
    # 2 trials (6 slots); the 2 slots left cannot hold a third.
    spec = load_spec("tune-smoke", ["scaling.cpus_per_worker=1", "tune.num_samples=8"])
    assert max_concurrent_trials(spec, [{"CPU": 2}] * 4) == 2
    # Workers of 1.5 CPUs on nodes of 2: one worker per node (0.5 left, too little for a driver).
    # Six nodes: trial 1 takes nodes 0, 1 and node 2 for its driver; trial 2 nodes 3, 4 and the
    # 1 CPU left on node 2; a third trial finds one node for its two workers.
    spec = load_spec("tune-smoke", ["scaling.cpus_per_worker=1.5", "tune.num_samples=8"])
    assert max_concurrent_trials(spec, [{"CPU": 2}] * 6) == 2
