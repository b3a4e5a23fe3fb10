"""Preflight checks that need no service: the data a spec names must be the data it trains on."""

from __future__ import annotations

import pytest

from data_shards.manifest import Manifest, ShardEntry
from jobs import preflight
from jobs.errors import ConfigError
from jobs.spec import load_spec


def manifest(split: str, boxes: str) -> Manifest:
    shard = ShardEntry(name=f"{split}-000000.tar", samples=64, faces=300, bytes=1000, sha256="0" * 64)
    return Manifest(split=split, shards=(shard,), annotation_file="coco_wholebody_train.json",
                    annotation_sha256="ab" * 32, boxes=boxes,
                    ground_truth={"main": {"name": "wider_face_val.mat"}} if split == "val" else {})


def test_a_spec_on_face_boxes_refuses_shards_of_person_boxes(monkeypatch):
    monkeypatch.setattr(preflight, "read_split_manifest", lambda spec, split, env: manifest(split, "person"))
    with pytest.raises(ConfigError, match=r"data\.boxes: the spec trains on face boxes, but the train shards at .* "
                                          r"hold person boxes: set data\.boxes: person, or build the shards with "
                                          r"--boxes face"):
        preflight.read_fingerprints(load_spec("smoke"), env=None)


def test_face_and_person_builds_of_one_annotation_file_are_different_data(monkeypatch):
    person = load_spec("smoke", ["data.boxes=person"])
    monkeypatch.setattr(preflight, "read_split_manifest", lambda spec, split, env: manifest(split, spec.data.boxes))
    faces, persons = preflight.read_fingerprints(load_spec("smoke"), None), preflight.read_fingerprints(person, None)
    assert faces["val"] == "ab" * 8  # WIDER and face builds keep the annotation file's own fingerprint
    assert persons["val"] != faces["val"]  # promotion never compares a person-box AP with a face-box AP
