"""A spec's generated data set and shards are rebuilt when its data.synth or the generator changed."""

from __future__ import annotations

import json

import pytest

from data_shards.manifest import Manifest, manifest_url, read_manifest
from data_shards.synth import STAMP_FILE, generated_fingerprint
from jobs.data_prep import generate_synth, prepare_data, synth_fingerprint
from jobs.environment import JobEnvironment
from jobs.spec import load_spec


def spec_in(tmp_path, *overrides):
    """The smoke spec shrunk to a few images, its data and shards in `tmp_path` (a folder as the store)."""
    return load_spec("smoke", [f"data.synth.root={tmp_path / 'data'}", f"data.shards={tmp_path / 'shards'}",
                               "data.synth.train_images=6", "data.synth.val_images=3",
                               "data.synth.generator.person_templates=2", *overrides])


@pytest.fixture
def env():
    return JobEnvironment.resolve({})


def test_the_same_spec_twice_builds_once_and_a_changed_synth_section_builds_again(tmp_path, env):
    spec = spec_in(tmp_path)
    assert prepare_data(spec, env) == ["train", "val"]
    first = read_manifest(manifest_url(str(tmp_path / "shards"), "train"))
    assert first.source == synth_fingerprint(spec.data.synth) == generated_fingerprint(tmp_path / "data")
    assert first.samples == 6

    assert prepare_data(spec, env) == []  # nothing changed: nothing generated, nothing built

    bigger = spec_in(tmp_path, "data.synth.train_images=8")
    assert prepare_data(bigger, env) == ["train", "val"]
    rebuilt = read_manifest(manifest_url(str(tmp_path / "shards"), "train"))
    assert rebuilt.samples == 8 and rebuilt.source == synth_fingerprint(bigger.data.synth) != first.source
    assert {s.name.split("/")[0] for s in rebuilt.shards}.isdisjoint({s.name.split("/")[0] for s in first.shards})
    assert generated_fingerprint(tmp_path / "data") == rebuilt.source
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial or old folder left


def test_shards_from_before_fingerprints_are_built_again(tmp_path, env):
    spec = spec_in(tmp_path)
    prepare_data(spec, env)
    url = manifest_url(str(tmp_path / "shards"), "val")
    older = json.loads((tmp_path / "shards" / "val" / "manifest.json").read_text())
    del older["source"]  # as an isrn before this field wrote it
    (tmp_path / "shards" / "val" / "manifest.json").write_text(json.dumps(older))
    assert read_manifest(url).source == ""
    assert prepare_data(spec, env) == ["val"]
    assert read_manifest(url).source == synth_fingerprint(spec.data.synth)


def test_an_upgraded_generator_gives_another_fingerprint(tmp_path, monkeypatch):
    synth = spec_in(tmp_path).data.synth
    before = synth_fingerprint(synth)
    changed = tmp_path / "synth_person.py"
    changed.write_text("# the drawing code, edited\n")
    monkeypatch.setattr("data_shards.synth_person.__file__", str(changed))
    assert synth_fingerprint(synth) != before


def test_a_folder_without_a_fingerprint_is_kept_beside_the_new_set(tmp_path):
    synth = spec_in(tmp_path).data.synth
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    root = generate_synth(synth)
    assert generated_fingerprint(root) == synth_fingerprint(synth)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("data.before-")]
    assert len(kept) == 1 and (kept[0] / "notes.txt").read_text() == "mine"


def test_a_generated_set_is_reused_and_a_failed_generation_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    synth = spec_in(tmp_path).data.synth
    root = generate_synth(synth)
    stamp = (root / STAMP_FILE).stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("data_shards.synth.generate_dataset", fail)
    assert generate_synth(synth) == root and (root / STAMP_FILE).stat().st_mtime_ns == stamp  # reused
    other = spec_in(tmp_path, "data.synth.seed=5").data.synth
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synth(other)
    assert generated_fingerprint(root) == synth_fingerprint(synth)  # the old set, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_manifest_keeps_its_source():
    manifest = Manifest(split="val", shards=(), annotation_file="a.txt", annotation_sha256="0" * 64, source="synth-1")
    data = json.loads(manifest.to_json())
    assert data["source"] == "synth-1"
    data["shards"] = [{"name": "v-1/val-000000.tar", "samples": 1, "faces": 1, "bytes": 1, "sha256": "0" * 64}]
    assert Manifest.from_json(json.dumps(data)).source == "synth-1"
