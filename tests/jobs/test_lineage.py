"""Where a run's starting weights came from: an alias is pinned to its version once, on the driver."""

from __future__ import annotations

import types

import pytest

from jobs import tags
from jobs.errors import ConfigError
from jobs.lineage import pin_init_from
from jobs.spec import load_spec


class Registry:
    """The two MlflowClient reads `pin_init_from` makes."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def get_model_version_by_alias(self, name, alias):
        if alias != "champion":
            from mlflow.exceptions import MlflowException

            raise MlflowException(f"Registered model alias {alias} not found.")
        return types.SimpleNamespace(name=name, version="3", run_id="stage1run")

    def get_model_version(self, name, version):
        return types.SimpleNamespace(name=name, version=version, run_id="older")


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    monkeypatch.setattr("mlflow.tracking.MlflowClient", Registry)


def test_an_alias_is_pinned_to_the_version_it_names_and_the_run_says_which():
    spec = load_spec("demo", ["model.init_from=models:/isrn-coco-pretrain@champion"])
    pinned, found = pin_init_from(spec, "http://mlflow")
    assert pinned.model.init_from == "models:/isrn-coco-pretrain/3"  # every worker loads this version
    assert found[tags.INIT_FROM] == "models:/isrn-coco-pretrain@champion"
    assert found[tags.INIT_FROM_VERSION] == "isrn-coco-pretrain/3" and found[tags.INIT_FROM_RUN] == "stage1run"
    assert "(#/models/isrn-coco-pretrain/versions/3)" in found["mlflow.note.content"]
    assert {tags.INIT_FROM, tags.INIT_FROM_VERSION, tags.INIT_FROM_RUN} <= set(tags.LINEAGE)  # versions copy them


def test_other_sources_are_kept_and_a_missing_alias_is_a_clear_error():
    spec = load_spec("demo", ["model.init_from=s3://bucket/runs/r/step_00000010"])
    assert pin_init_from(spec, "http://mlflow") == (spec, {tags.INIT_FROM: "s3://bucket/runs/r/step_00000010"})
    assert pin_init_from(load_spec("demo"), "http://mlflow") == (load_spec("demo"), {})
    versioned, found = pin_init_from(load_spec("demo", ["model.init_from=models:/m/2"]), "http://mlflow")
    assert versioned.model.init_from == "models:/m/2" and found[tags.INIT_FROM_RUN] == "older"
    with pytest.raises(ConfigError, match=r"model\.init_from: models:/m@staging: .*alias staging not found.*"
                                          r"promote a model there first"):
        pin_init_from(load_spec("demo", ["model.init_from=models:/m@staging"]), "http://mlflow")
