"""Generated WIDER-format data: layout, determinism, and .mat files shaped like the official ones."""

import numpy as np
import scipy.io

from data_shards.config import SynthConfig
from data_shards.synth import (BLUR_OCCLUSION_BY_HEIGHT, blur_and_occlusion_rates, face_settings, generate_dataset,
                               generate_image, val_ground_truth)
from data_shards.wider_layout import Face, ImageRecord, WiderLayout
from isrn_model.wider_eval import ATTRIBUTE_VALUES, ATTRIBUTES, SETTINGS, ground_truth_mat_files, load_ground_truth


def test_layout_and_annotations(wider_root):
    layout = WiderLayout(wider_root)
    for split, n in (("train", 12), ("val", 8), ("test", 2)):
        records = layout.records(split)
        assert len(records) == n
        for rec in records:
            assert layout.image_path(split, rec).read_bytes()[:2] == b"\xff\xd8"  # JPEG
    faces = [f for r in layout.records("train") for f in r.faces]
    assert faces and all(f.x >= 0 and f.y >= 0 for f in faces)


def test_deterministic_by_seed(tmp_path):
    a, fa = generate_image("train", 3, seed=11)
    b, fb = generate_image("train", 3, seed=11)
    c, _ = generate_image("train", 3, seed=12)
    assert np.array_equal(a, b) and fa == fb
    assert a.shape != c.shape or not np.array_equal(a, c)
    generate_dataset(tmp_path / "x", train=3, val=2, seed=1)
    generate_dataset(tmp_path / "y", train=3, val=2, seed=1)
    for path in sorted((tmp_path / "x").rglob("*.*")):
        assert path.read_bytes() == (tmp_path / "y" / path.relative_to(tmp_path / "x")).read_bytes(), path


def test_settings_rule_is_nested_by_height_and_excludes_invalid():
    assert face_settings(Face(0, 0, 42, 50)) == {"easy", "medium", "hard"}
    assert face_settings(Face(0, 0, 40, 49)) == {"medium", "hard"}
    assert face_settings(Face(0, 0, 25, 30, blur=2, occlusion=2)) == {"medium", "hard"}  # the labels do not decide
    assert face_settings(Face(0, 0, 24, 29)) == {"hard"}
    assert face_settings(Face(0, 0, 8, 10)) == {"hard"}
    assert face_settings(Face(0, 0, 8, 9)) == frozenset()  # under 10 px: in no setting, as in the official lists
    assert face_settings(Face(0, 0, 50, 60, invalid=1)) == frozenset()
    assert face_settings(Face(0, 0, 0, 60)) == frozenset()


def test_settings_rule_reproduces_the_official_val_lists(shared_dir):
    """The height rule, applied to the real WIDER FACE val faces, selects the faces of the official
    Easy / Medium / Hard lists (F1 of the rule's faces against the list's)."""
    gt = load_ground_truth(shared_dir / "widerface" / "ground_truth")
    f1 = {}
    for setting in SETTINGS:
        chosen = listed = both = 0
        for image in gt:
            rule = np.array([setting in face_settings(Face(0, 0, int(w), int(h), invalid=int(bad)))
                             for (_, _, w, h), bad in zip(image.boxes, image.attributes["invalid"])], dtype=bool)
            official = np.zeros(len(image.boxes), dtype=bool)
            official[image.keep[setting]] = True
            chosen, listed, both = chosen + rule.sum(), listed + official.sum(), both + (rule & official).sum()
        f1[setting] = 2 * both / (chosen + listed)
    assert min(f1.values()) > 0.98, f1


def test_blur_and_occlusion_rates_are_the_official_val_faces(shared_dir):
    """The generator's blur and occlusion rates by face height are those of the real WIDER FACE val
    faces (invalid ones left out), to 0.015 per label."""
    gt = load_ground_truth(shared_dir / "widerface" / "ground_truth")
    heights = np.concatenate([image.boxes[:, 3] for image in gt])
    labels = {name: np.concatenate([image.attributes[name] for image in gt]) for name in ("blur", "occlusion", "invalid")}
    bands = [row[0] for row in BLUR_OCCLUSION_BY_HEIGHT] + [np.inf]
    for (lowest, blur_p, occlusion_p), highest in zip(BLUR_OCCLUSION_BY_HEIGHT, bands[1:]):
        band = (heights >= lowest) & (heights < highest) & (labels["invalid"] == 0)
        assert band.sum() > 400, (lowest, band.sum())
        for name, table in (("blur", blur_p), ("occlusion", occlusion_p)):
            measured = np.bincount(labels[name][band], minlength=3)[:3] / band.sum()
            assert np.allclose(measured, table, atol=0.015), (name, lowest, measured.round(3), table)
        tallest = int(highest) - 1 if np.isfinite(highest) else 10_000  # the whole band looks up this row
        assert blur_and_occlusion_rates(int(lowest)) == blur_and_occlusion_rates(tallest) == (blur_p, occlusion_p)


def test_generated_faces_are_blurred_by_height():
    """With blur_occlusion="by_height", generated small faces are mostly heavily blurred and large ones
    mostly sharp, as in WIDER FACE."""
    config = SynthConfig(blur_occlusion="by_height")
    faces = [face for index in range(40) for face in generate_image("val", index, 3, config)[1] if not face.invalid]
    small = np.array([face.blur for face in faces if face.h < 30])
    large = np.array([face.blur for face in faces if face.h >= 100])
    assert len(small) > 100 and len(large) > 10, (len(small), len(large))
    assert (small == 2).mean() > 0.5 and (large == 0).mean() > 0.6 and (large == 2).mean() < 0.1


def _mat(path):
    return scipy.io.loadmat(path)


def test_val_mats_match_the_official_structure(wider_root, shared_dir):
    official = shared_dir / "widerface" / "ground_truth"
    for name in ("wider_face_val.mat", "wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat"):
        ours, ref = _mat(wider_root / "ground_truth" / name), _mat(official / name)
        keys = {k for k in ref if not k.startswith("__")}
        assert {k for k in ours if not k.startswith("__")} == keys, name
        for key in keys:
            assert ours[key].dtype == object and ours[key].ndim == 2 and ours[key].shape[1] == 1
            if key == "event_list":
                assert ours[key][0, 0].dtype.kind == ref[key][0, 0].dtype.kind == "U"
                continue
            inner, ref_inner = ours[key][0, 0], ref[key][0, 0]
            assert inner.dtype == object and inner.shape[1] == 1, key
            elem, ref_elem = inner[0, 0], ref_inner[0, 0]
            assert elem.dtype.kind == ref_elem.dtype.kind, key
            if key == "face_bbx_list":
                assert elem.dtype == np.int32 and elem.shape[1] == 4
            elif key.endswith("_label_list") or key == "gt_list":
                assert elem.dtype == ref_elem.dtype == np.uint8 and elem.ndim == 2 and elem.shape[1] == 1


def test_gt_list_follows_the_rule(wider_root):
    layout = WiderLayout(wider_root)
    gt = load_ground_truth(wider_root / "ground_truth")
    records = {(r.event, r.name): r for r in layout.records("val")}
    assert set(gt.keys()) == set(records)
    for image in gt:
        rec = records[image.key]
        np.testing.assert_array_equal(image.boxes, np.array([f.xywh() for f in rec.faces], np.int32).reshape(-1, 4))
        previous = set()
        for setting in SETTINGS:  # easy, medium, hard: nested
            counted = set(image.keep[setting].tolist())
            assert counted == {i for i, f in enumerate(rec.faces) if setting in face_settings(f)}
            assert previous <= counted
            assert not any(rec.faces[i].invalid for i in counted)
            previous = counted


def test_the_labels_of_what_was_done_survive_the_mat_files(wider_root):
    # Each face's six codes in the annotation file (what the generator did to it) are its label lists
    # in the .mat files: the metric's per-attribute breakdown reads them from there.
    records = {(r.event, r.name): r for r in WiderLayout(wider_root).records("val")}
    gt = load_ground_truth(wider_root / "ground_truth")
    assert gt.has_attributes
    for image in gt:
        faces = records[image.key].faces
        for name in ATTRIBUTES:
            assert image.attributes[name].tolist() == [getattr(f, name) for f in faces], (image.key, name)
    # wider_face_split/ holds the same wider_face_val.mat as ground_truth/
    split_copy = (wider_root / "wider_face_split" / "wider_face_val.mat").read_bytes()
    assert split_copy == (wider_root / "ground_truth" / "wider_face_val.mat").read_bytes()


def test_every_attribute_code_round_trips(tmp_path):
    # Hand-made faces covering every code of every attribute (blur 0-2, occlusion 0-2, the others 0-1),
    # in an image each: generator records -> .mat bytes -> load_ground_truth.
    faces = []
    for name in ATTRIBUTES:
        for code in range(len(ATTRIBUTE_VALUES[name])):
            faces.append(Face(10 * len(faces), 5, 30, 36, **{name: code}))
    records = [ImageRecord("0--Parade/0_Parade_Parade_0_1.jpg", tuple(faces[:7])),
               ImageRecord("0--Parade/0_Parade_Parade_0_2.jpg", ()),  # no face: empty lists
               ImageRecord("12--Group/12_Group_Group_12_3.jpg", tuple(faces[7:]))]
    for name, data in ground_truth_mat_files(val_ground_truth(records)).items():
        (tmp_path / name).write_bytes(data)
    gt = load_ground_truth(tmp_path)
    assert [image.key for image in gt] == [(r.event, r.name) for r in records]
    loaded = {name: np.concatenate([image.attributes[name] for image in gt]).tolist() for name in ATTRIBUTES}
    assert loaded == {name: [getattr(f, name) for f in faces] for name in ATTRIBUTES}
    # face_settings decides the keep lists: by height alone, so every valid 36-px face is in Medium, none in Easy
    assert [int(k) + 1 for k in gt.images[0].keep["medium"]] == [1, 2, 3, 4, 5, 6, 7]
    assert list(gt.images[0].keep["easy"]) == []
