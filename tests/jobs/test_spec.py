"""Job specs: one typed tree, errors that name the field, overrides, every shipped spec loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.errors import ConfigError
from jobs.overrides import parse_override
from jobs.serving.inference import SIDE_MULTIPLE
from jobs.spec import SPECS_DIR, JobSpec, load_spec


@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_loads(path):
    spec = load_spec(path)
    assert isinstance(spec, JobSpec) and spec.name


@pytest.mark.parametrize("path", sorted(SPECS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_evaluates_as_served(path):
    """One val image per batch: padded to a shared canvas, a GroupNorm detector's AP would depend on
    which images share a batch (data_shards.config.LoaderConfig.val_batch_size)."""
    spec = load_spec(path)
    assert spec.loader.val_batch_size == 1
    assert spec.loader.val_size_multiple == SIDE_MULTIPLE  # the served model's canvas


def test_overrides_are_typed_and_applied():
    spec = load_spec("smoke", ["optim.lr=0.02", "train.epochs=3", "model.norm=frozen_bn", "optim.milestones=[0.5, 0.8]"])
    assert spec.optim.lr == 0.02 and spec.train.epochs == 3 and spec.model.norm == "frozen_bn"
    assert spec.optim.milestones == (0.5, 0.8)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("scaling.num_workers=two", r"scaling\.num_workers: Input should be a valid integer"),
        ("train.epoch=3", r"train\.epoch: unknown key"),
        ("model.bogus=1", r"model\.bogus: unknown key"),
        ("model.depth=19", r"model\.depth: Input should be 18, 34, 50 or 101"),
        ("loader.batch_size=0", r"loader\.batch_size: Input should be greater than 0"),
        ("loader.image_size=256", r"loader\.image_size: unknown key"),
        ("loader.augment.zoom_out_max=0.5", r"loader\.augment\.zoom_out_max: Input should be greater than or equal to 1"),
        ("model.stc_levels=[2, 2]", r"model: stc_levels must list distinct levels"),
        ("optim.milestones=[0.9, 0.5]", r"optim\.milestones: .*increasing"),
        ("optim.name=rmsprop", r"optim\.name: Input should be 'sgd' or 'adamw'"),
    ],
)
def test_bad_fields_are_named(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_spec("smoke", [override])
    assert "smoke.yaml" in str(error.value)


def test_override_syntax_and_unknown_spec():
    assert parse_override("optim.lr=1e-3") == ("optim.lr", 1e-3)
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="not found: give a YAML path or one of: .*smoke"):
        load_spec("no-such-spec")


def test_flat_params_and_fingerprint():
    spec = load_spec("smoke")
    params = spec.flat_params()
    assert params["optim.lr"] == "0.01" and params["model.depth"] == "18"
    assert all(len(v) <= 500 for v in params.values())
    assert spec.fingerprint() == load_spec("smoke").fingerprint() != load_spec("smoke", ["optim.lr=0.5"]).fingerprint()


def test_the_job_spec_imports_neither_torch_nor_opencv_nor_webdataset():
    # `isrn train SPEC --dry-run` and `isrn submit` only validate the spec: they must start fast.
    code = ("import sys, jobs.spec, jobs.commands.train, jobs.commands.submit; "
            "print(sorted(m for m in ('torch', 'webdataset', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---- ${VAR} in spec strings (k8s: the buckets of the isrn-platform ConfigMap) ------------------

BUCKET_VARS = ("ISRN_SHARDS_BUCKET", "ISRN_CHECKPOINTS_BUCKET")


@pytest.fixture
def no_bucket_env(monkeypatch):
    for name in BUCKET_VARS:
        monkeypatch.delenv(name, raising=False)


def test_buckets_default_to_the_local_platforms(no_bucket_env):
    spec = load_spec("smoke")
    assert (spec.data.shards, spec.checkpoint.storage) == ("s3://isrn-shards/smoke", "s3://isrn-checkpoints/runs")


def test_buckets_come_from_the_environment_and_show_resolved(no_bucket_env, monkeypatch):
    monkeypatch.setenv("ISRN_SHARDS_BUCKET", "acme-shards")
    monkeypatch.setenv("ISRN_CHECKPOINTS_BUCKET", "")  # empty counts as unset, as `${VAR:-default}` in a shell
    spec = load_spec("widerface-r50")
    assert spec.data.shards == "s3://acme-shards/widerface"
    assert spec.checkpoint.storage == "s3://isrn-checkpoints/runs"
    # What MLflow logs: the resolved spec file and the flattened params.
    assert "shards: s3://acme-shards/widerface" in spec.to_yaml() and "${" not in spec.to_yaml()
    assert spec.flat_params()["data.shards"] == "s3://acme-shards/widerface"
    # A resolved spec loads back to itself (Tune trials reload `spec.to_dict()`).
    assert load_spec(spec.to_dict()).fingerprint() == spec.fingerprint()


def test_every_shipped_s3_url_takes_its_bucket_from_the_environment(monkeypatch):
    monkeypatch.setenv("ISRN_SHARDS_BUCKET", "b-shards")
    monkeypatch.setenv("ISRN_CHECKPOINTS_BUCKET", "b-checkpoints")
    for path in sorted(SPECS_DIR.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.data.shards.startswith("s3://b-shards/"), path.name
        assert spec.checkpoint.storage.startswith("s3://b-checkpoints/"), path.name


def test_an_unset_variable_without_default_names_the_field_and_the_variable(monkeypatch):
    monkeypatch.delenv("ISRN_NO_SUCH_BUCKET", raising=False)
    with pytest.raises(ConfigError, match=r"smoke\.yaml: data\.shards: \$\{ISRN_NO_SUCH_BUCKET\} is not set"):
        load_spec("smoke", ["data.shards=s3://${ISRN_NO_SUCH_BUCKET}/smoke"])
    monkeypatch.setenv("ISRN_NO_SUCH_BUCKET", "")
    with pytest.raises(ConfigError, match=r"ISRN_NO_SUCH_BUCKET"):
        load_spec("smoke", ["data.shards=s3://${ISRN_NO_SUCH_BUCKET}/smoke"])


def test_only_braced_references_are_expanded(monkeypatch):
    monkeypatch.setenv("HOME_BUCKET", "h")
    spec = load_spec("smoke", ["data.shards=s3://${HOME_BUCKET}/$HOME/${HOME_BUCKET:-x}-$"])
    assert spec.data.shards == "s3://h/$HOME/h-$"


# ---- descriptions and --explain ------------------------------------------------------------------

def _undescribed(cls, prefix: str = "") -> list[str]:
    from isrn_model.section import section_fields as _fields_of

    missing = []
    for name, field in _fields_of(cls).items():
        if not (field.description or "").strip():
            missing.append(prefix + name)
        for inner in _section_types(field.annotation):
            missing += _undescribed(inner, f"{prefix}{name}.")
    return missing


def _section_types(annotation) -> list:
    import typing

    from isrn_model.section import section_fields as _fields_of

    candidates = [annotation, *typing.get_args(annotation)]
    return [c for c in candidates if isinstance(c, type) and _fields_of(c)]


def test_every_spec_field_has_a_description():
    from jobs.spec import JobSpec

    assert _undescribed(JobSpec) == []


def test_explain_prints_values_defaults_and_descriptions():
    from jobs.spec import explain

    text = explain(load_spec("smoke", ["optim.lr=0.02"]))
    assert '  lr: 0.02  (default 0.01)  # Peak learning rate for the whole global batch.' in text
    assert "\ntrain:  # The training loop.\n" in text
    assert "  depth: 18  # " in text  # a library section's field, described by its docstring
