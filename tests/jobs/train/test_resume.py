"""Run names and resumes: names that never collide, a resume that names an existing run, with its spec.

The rules are pure (jobs/train/resume.py); `plan_run` applies them against the session's MLflow server,
where runs are made the way `isrn train` makes them (`start_or_resume_run`: params and the spec artifact).
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from jobs.errors import ConfigError
from jobs.spec import load_spec
from jobs.train import resume
from jobs.train.driver import RunPlan, plan_run
from jobs.train.resume import CHANGEABLE, check_run_name, new_run_name, resume_changes, spec_differences


def test_two_jobs_started_in_the_same_second_get_two_run_names(monkeypatch):
    monkeypatch.setattr(resume, "utc_now", lambda: dt.datetime(2026, 11, 29, 10, 15, 0, tzinfo=dt.UTC))
    spec = load_spec("smoke")
    names = {new_run_name(spec) for _ in range(200)}
    assert len(names) == 200
    assert all(name.startswith("smoke-20261129-101500-") for name in names)


def test_run_names_must_be_storage_and_filter_safe():
    assert check_run_name("nightly-42.b_1") == "nightly-42.b_1"
    for bad in ("", "a/b", "it's", "-x", "x" * 129, "a b"):
        with pytest.raises(ConfigError, match="a run name is 1 to 128 letters"):
            check_run_name(bad)


def test_differences_list_every_changed_field():
    started = load_spec("smoke").to_dict()
    now = load_spec("smoke", ["optim.lr=0.02", "train.epochs=5", "data.synth=null"])
    differences = dict((field, (old, new)) for field, old, new in spec_differences(started, now.to_dict()))
    assert differences["optim.lr"] == (0.01, 0.02) and differences["train.epochs"] == (2, 5)
    assert differences["data.synth.seed"] == (0, None)  # a section set to null: each of its fields differs
    assert spec_differences(started, load_spec("smoke").to_dict()) == []


def test_a_resume_may_change_only_the_changeable_fields_and_only_when_allowed():
    started = load_spec("smoke").to_dict()
    longer = load_spec("smoke", ["train.epochs=5", "checkpoint.every_steps=2"])
    with pytest.raises(ConfigError, match=r"(?s)run 'r' was started with another spec.*train.epochs: 2 -> 5.*"
                                          r"--allow-change"):
        resume_changes(started, longer, run="r", allow_change=False)
    assert [f for f, _, _ in resume_changes(started, longer, run="r", allow_change=True)] == [
        "checkpoint.every_steps", "train.epochs"]
    for fixed in ("optim.lr=0.02", "loader.batch_size=2", "model.norm=bn", "scaling.num_workers=1",
                  "data.shards=s3://other/x"):
        with pytest.raises(ConfigError, match=rf"never change within a run.*\n  {fixed.split('=')[0]}:"):
            resume_changes(started, load_spec("smoke", [fixed, "train.epochs=5"]), run="r", allow_change=True)
    assert set(CHANGEABLE) <= {f"{s}.{k}" for s, section in started.items() if isinstance(section, dict)
                               for k in section}  # every changeable field exists


# ---------------------------------------------------------------- against the MLflow server
def _started_run(uri: str, spec, name: str) -> str:
    from jobs.train.tracking import start_or_resume_run

    return start_or_resume_run(uri, spec.tracking.experiment, name, tags={"isrn.spec_fingerprint": spec.fingerprint()},
                               params=spec.flat_params(), spec_yaml=spec.to_yaml())


@pytest.mark.integration
def test_a_resume_names_an_existing_run_with_its_spec(mlflow_env):
    from jobs.train.tracking import finish_run, record_spec_change, run_spec

    uri, client = mlflow_env
    experiment = f"resume-{uuid.uuid4().hex[:6]}"
    spec = load_spec("smoke", [f"tracking.experiment={experiment}"])
    name = new_run_name(spec)
    run_id = _started_run(uri, spec, name)

    # A mistyped name is an error that lists the experiment's recent runs.
    with pytest.raises(ConfigError, match=rf"(?s)--resume {name}x: no run of that name .*most recent runs:\n  {name}  "
                                          r"RUNNING  started"):
        plan_run(spec, uri, resume=name + "x")
    # --run-name of a name that does not exist: a new run under it.
    assert plan_run(spec, uri, run_name="fresh-name") == RunPlan("fresh-name", None, spec)
    # The same spec resumes; another is refused with its fields, or accepted where a run may change.
    assert plan_run(spec, uri, resume=name) == RunPlan(name, run_id, spec)
    assert plan_run(spec, uri, run_name=name).existing_run_id == run_id
    other = load_spec("smoke", [f"tracking.experiment={experiment}", "optim.lr=0.05"])
    with pytest.raises(ConfigError, match=r"never change within a run.*\n  optim.lr: 0.01 -> 0.05"):
        plan_run(other, uri, resume=name, allow_change=True)
    longer = load_spec("smoke", [f"tracking.experiment={experiment}", "train.epochs=4"])
    with pytest.raises(ConfigError, match=r"train.epochs: 2 -> 4\nPass --allow-change"):
        plan_run(longer, uri, resume=name)
    plan = plan_run(longer, uri, resume=name, allow_change=True)
    assert plan.changes == [("train.epochs", 2, 4)]

    # An accepted change is where the next resume compares: the run's spec is now the longer one.
    record_spec_change(uri, run_id, longer.to_yaml(), longer.fingerprint(), "train.epochs: 2 -> 4")
    assert run_spec(uri, run_id)["train"]["epochs"] == 4
    assert plan_run(longer, uri, resume=name).changes == []
    with pytest.raises(ConfigError, match=r"train.epochs: 4 -> 2"):
        plan_run(spec, uri, resume=name)
    tags = client.get_run(run_id).data.tags
    assert "train.epochs: 2 -> 4" in tags["isrn.spec_changes"] and tags["isrn.spec_fingerprint"] == longer.fingerprint()
    assert client.get_run(run_id).data.params["train.epochs"] == "2"  # params keep the values it started with

    # A finished run has nothing to resume unless it is trained longer.
    finish_run(uri, run_id, "FINISHED")
    with pytest.raises(ConfigError, match="finished all its 4 epochs: nothing to resume"):
        plan_run(longer, uri, run_name=name)
    even_longer = load_spec("smoke", [f"tracking.experiment={experiment}", "train.epochs=6"])
    assert plan_run(even_longer, uri, resume=name, allow_change=True).changes == [("train.epochs", 4, 6)]


def test_a_resume_keeps_the_version_its_run_pinned_from_an_alias():
    """The run started from `models:/coco@champion`, recorded as the version it named then (v3); the
    alias has moved since. The resume loads its checkpoint: it keeps v3, and the spec compares equal."""
    from jobs.train.resume import keep_pinned_init_from

    started = load_spec("smoke", ["model.init_from=models:/coco/3"]).to_dict()
    again = load_spec("smoke", ["model.init_from=models:/coco@champion"])
    kept = keep_pinned_init_from(again, started)
    assert kept.model.init_from == "models:/coco/3" and spec_differences(started, kept.to_dict()) == []
    other = load_spec("smoke", ["model.init_from=models:/other@champion"])
    assert keep_pinned_init_from(other, started).model.init_from == "models:/other@champion"  # another model
    assert keep_pinned_init_from(load_spec("smoke"), started).model.init_from is None
