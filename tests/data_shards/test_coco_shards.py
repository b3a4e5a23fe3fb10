"""COCO-format data into shards: the WIDER path's records, the evaluator's ground truth, versions.

The generated set is written twice over the same image files: the WIDER layout and COCO-WholeBody
JSON (`synth_coco`). Converting the COCO JSON must give what converting the same images and boxes
through the WIDER format gives: the same keys, image bytes, sizes and boxes.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from data_shards import shard_writer
from data_shards.coco_shards import build_coco_split
from data_shards.manifest import check_shards, fetch_ground_truth, manifest_url, read_manifest
from data_shards.shard_writer import build_split
from data_shards.storage import LocalStore
from data_shards.synth_coco import annotation_path, write_coco_split
from data_shards.wider_layout import Face, ImageRecord, WiderLayout, format_bbx_gt
from isrn_model.wider_eval import evaluate, load_ground_truth


@pytest.fixture(scope="module")
def coco_root(wider_root: Path) -> Path:
    """The session's generated set (12 train, 8 val images) with its COCO annotation files."""
    layout = WiderLayout(wider_root)
    for split in ("train", "val"):
        if not annotation_path(wider_root, split).is_file():
            write_coco_split(wider_root, split, layout.records(split))
    return wider_root


def samples(out: str, split: str) -> dict[str, tuple[bytes, dict]]:
    """key -> (image bytes, JSON record) of every sample of a split built into the folder `out`."""
    url = manifest_url(out, split)
    manifest = read_manifest(url)
    found = {}
    for shard in manifest.shards:
        with tarfile.open(Path(out) / split / shard.name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".jpg"):
                key = name[: -len(".jpg")]
                found[key] = (data, json.loads(members[f"{key}.json"]))
    return found


def boxes_of(record: dict) -> list[tuple[int, int, int, int, int]]:
    return [(f["x"], f["y"], f["w"], f["h"], f["invalid"]) for f in record["faces"]]


def assert_same_samples(coco: dict, wider: dict) -> None:
    assert sorted(coco) == sorted(wider)
    for key, (image, record) in coco.items():
        wider_image, wider_record = wider[key]
        assert image == wider_image, key  # the original bytes, never re-encoded
        for field in ("key", "event", "name", "split", "width", "height"):
            assert record[field] == wider_record[field], (key, field)
        assert boxes_of(record) == boxes_of(wider_record), key
        assert isinstance(record["image_id"], int)


@pytest.mark.parametrize("split", ["train", "val"])
def test_face_boxes_give_the_wider_paths_records(coco_root, tmp_path, split):
    wider_out, coco_out = str(tmp_path / "wider"), str(tmp_path / "coco")
    build_split(coco_root, split, wider_out, shard_size_mb=0.05, progress=False)
    manifest = build_coco_split(annotation_path(coco_root, split), coco_root / f"WIDER_{split}" / "images", split,
                                coco_out, boxes="face", shard_size_mb=0.05, progress=False)
    wider = samples(wider_out, split)
    coco = samples(coco_out, split)
    # COCO keeps its person images only: the generated images without a face are the ones left out.
    faceless = {f"{r.event}/{r.name}" for r in WiderLayout(coco_root).records(split) if not r.faces}
    assert set(wider) - set(coco) == faceless
    assert_same_samples(coco, {key: wider[key] for key in coco})
    assert manifest.boxes == "face" and read_manifest(manifest_url(coco_out, split)).boxes == "face"
    if split == "train":  # its invalid and degenerate faces came through as the WIDER file has them
        assert any(f[4] for _, r in coco.values() for f in boxes_of(r))


def test_person_boxes_give_the_wider_paths_records(coco_root, tmp_path):
    """The person boxes written as a WIDER annotation file beside the same images, through the WIDER path."""
    data = json.loads(annotation_path(coco_root, "train").read_text())
    by_image: dict[int, list[Face]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(Face(*ann["bbox"]))
    records = [ImageRecord(image["file_name"], tuple(by_image[image["id"]]))
               for image in data["images"] if image["id"] in by_image]
    root = tmp_path / "person-boxes-as-wider"
    (root / "wider_face_split").mkdir(parents=True)
    (root / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text(format_bbx_gt(records))
    (root / "WIDER_train").symlink_to(coco_root / "WIDER_train")

    wider_out, coco_out = str(tmp_path / "wider"), str(tmp_path / "coco")
    wider_manifest = build_split(root, "train", wider_out, shard_size_mb=0.05, progress=False)
    coco_manifest = build_coco_split(annotation_path(coco_root, "train"), coco_root / "WIDER_train" / "images",
                                     "train", coco_out, boxes="person", shard_size_mb=0.05, progress=False)
    assert_same_samples(samples(coco_out, "train"), samples(wider_out, "train"))
    # The same images in the same order: the same shard plan.
    assert [s.samples for s in coco_manifest.shards] == [s.samples for s in wider_manifest.shards]
    assert coco_manifest.boxes == "person" and coco_manifest.faces == wider_manifest.faces


@pytest.mark.parametrize("boxes", ["face", "person"])
def test_val_ground_truth_scores_a_perfect_prediction_set_ap_1(coco_root, tmp_path, boxes):
    out = str(tmp_path / "shards")
    build_coco_split(annotation_path(coco_root, "val"), coco_root / "WIDER_val" / "images", "val", out,
                     boxes=boxes, shard_size_mb=0.05, progress=False)
    fetch_ground_truth(manifest_url(out, "val"), tmp_path / "gt")
    truth = load_ground_truth(tmp_path / "gt")
    records = {key: record for key, (_, record) in samples(out, "val").items()}
    assert sorted(f"{e}/{n}" for e, n in truth.keys()) == sorted(records)
    predictions = {}
    for image in truth:  # every box, scored in annotation order; the ignored ones too
        boxes_xywh = image.boxes.astype(np.float64)
        predictions[image.key] = np.hstack([boxes_xywh, np.linspace(1, 0.5, len(boxes_xywh))[:, None]])
        assert boxes_of(records[f"{image.event}/{image.name}"]) == [
            (*map(int, box), int(k not in image.keep["hard"])) for k, box in enumerate(image.boxes)]
    result = evaluate(predictions, truth)
    assert all(result.num_faces[s] > 0 for s in ("easy", "medium", "hard")), result.num_faces
    assert result.ap == {"easy": 1.0, "medium": 1.0, "hard": 1.0}


def test_a_rebuild_resumes_and_the_other_box_kind_is_another_version(coco_root, tmp_path, monkeypatch):
    out = str(tmp_path / "shards")
    args = (annotation_path(coco_root, "val"), coco_root / "WIDER_val" / "images", "val", out)
    faces = build_coco_split(*args, boxes="face", shard_size_mb=0.05, progress=False)
    url = manifest_url(out, "val")

    uploads = []
    original = LocalStore.put_file
    monkeypatch.setattr(LocalStore, "put_file", lambda self, p, n, sha: (uploads.append(n), original(self, p, n, sha)))
    monkeypatch.setattr(time, "asctime", lambda *_: "Fri Jan  1 00:00:00 2100")  # scipy's .mat header time
    again = build_coco_split(*args, boxes="face", shard_size_mb=0.05, progress=False)
    assert uploads == []  # the same shards and the same ground-truth bytes: nothing written again
    assert again.shards == faces.shards and again.ground_truth == faces.ground_truth

    persons = build_coco_split(*args, boxes="person", shard_size_mb=0.05, progress=False)
    assert {s.name.split("/")[0] for s in persons.shards}.isdisjoint({s.name.split("/")[0] for s in faces.shards})
    check_shards(url, faces, verify=True)  # every shard of the face version is still there, unchanged
    assert read_manifest(url) == persons


def test_wider_builds_keep_their_versions(wider_root, tmp_path):
    """Feeding the writer from a second source left the WIDER path's version names as they were."""
    manifest = build_split(wider_root, "train", str(tmp_path / "s"), shard_size_mb=0.05, progress=False)
    layout = WiderLayout(wider_root)
    records = layout.records("train")
    sizes = shard_writer.image_sizes(layout, "train", records)
    plan = shard_writer.plan_shards(sizes, int(0.05 * 1024 * 1024))
    from data_shards.storage import sha256_file

    version = shard_writer.build_version(sha256_file(layout.annotation_file("train")),
                                         [[records[i].path for i in idx] for idx in plan])
    assert {s.name.split("/")[0] for s in manifest.shards} == {version}
    assert manifest.boxes == "face"
    with tarfile.open(fileobj=io.BytesIO((tmp_path / "s" / "train" / manifest.shards[0].name).read_bytes())) as tar:
        record = json.loads(tar.extractfile([m for m in tar.getmembers() if m.name.endswith(".json")][0]).read())
    assert record["source"].startswith("WIDER_train/images/") and "image_id" not in record


@pytest.mark.integration
def test_through_the_real_s3_the_loaders_and_the_metric_read_it(coco_root, s3_env, fresh_bucket, tmp_path):
    from data_shards.loader import AugmentConfig, LoaderConfig, make_train_loader, make_val_loader

    url = f"s3://{fresh_bucket}/coco-face"
    for split in ("train", "val"):
        build_coco_split(annotation_path(coco_root, split), coco_root / f"WIDER_{split}" / "images", split, url,
                         boxes="face", shard_size_mb=0.05, progress=False)
    fetch_ground_truth(manifest_url(url, "val"), tmp_path / "gt")
    truth = load_ground_truth(tmp_path / "gt")
    config = LoaderConfig(batch_size=2, augment=AugmentConfig(out_size=96), num_workers=1, val_batch_size=4)
    keys = [k for batch in make_val_loader(manifest_url(url, "val"), config) for k in batch["keys"]]
    assert sorted(keys) == sorted(truth.keys())
    assert len(list(make_train_loader(manifest_url(url, "train"), config))) > 0
