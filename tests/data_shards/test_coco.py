"""COCO-format annotations: the reader's mapping by hand, and the generated set's person boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_shards.coco import CocoFormatError, face_settings, ground_truth_arrays, read_coco
from data_shards.synth_coco import coco_annotations, person_boxes
from data_shards.wider_layout import Face, ImageRecord
from isrn_model.wider_eval import box_overlap, evaluate, ground_truth_from_arrays


def coco_file(tmp_path, annotations, images=None, categories=None):
    data = {
        "images": images or [{"id": 7, "file_name": "000000000007.jpg", "width": 64, "height": 48}],
        "annotations": annotations,
        "categories": categories or [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def person(ann_id, bbox, *, image_id=7, face_box=None, face_valid=True, iscrowd=0, category_id=1):
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd}
    if face_box is not None:
        ann.update(face_box=face_box, face_valid=face_valid)
    return ann


def test_edges_are_rounded_to_whole_pixels(tmp_path):
    # x1 = round(10.4) = 10, x2 = round(10.4 + 30.2 = 40.6) = 41 -> w 31
    # y1 = round(20.6) = 21, y2 = round(20.6 + 20.5 = 41.1) = 41 -> h 20
    path = coco_file(tmp_path, [person(1, [10.4, 20.6, 30.2, 20.5])])
    (image,) = read_coco(path, boxes="person").images
    assert image.record.faces == (Face(10, 21, 31, 20),)
    assert image.record.path == "coco/000000000007.jpg" and (image.width, image.height) == (64, 48)


def test_crowd_and_unclear_faces_are_invalid_and_zero_face_boxes_are_no_face(tmp_path):
    path = coco_file(tmp_path, [
        person(1, [0, 0, 30, 40], face_box=[2, 2, 10, 12]),
        person(2, [30, 0, 30, 40], face_box=[32, 2, 10, 12], face_valid=False),
        person(3, [0, 0, 64, 48], face_box=[0, 0, 0, 0], face_valid=False, iscrowd=1),  # WholeBody: no box
        person(4, [1, 1, 5, 5], category_id=2, face_box=[1, 1, 2, 2]),  # a bicycle: not read
    ])
    faces = read_coco(path, boxes="face")
    assert faces.images[0].record.faces == (Face(2, 2, 10, 12), Face(32, 2, 10, 12, invalid=1))
    assert faces.counts["no_face_box"] == 1 and faces.counts["other_categories"] == 1
    persons = read_coco(path, boxes="person")
    assert persons.images[0].record.faces == (Face(0, 0, 30, 40), Face(30, 0, 30, 40), Face(0, 0, 64, 48, invalid=1))
    assert persons.counts["crowd"] == 1


def test_a_box_past_the_border_is_clipped_and_counted(tmp_path):
    # x1 = round(-3.2) = -3 -> 0; x2 = round(-3.2 + 20) = 17; y2 = round(40 + 10.4) = 50 -> 48 (image height)
    path = coco_file(tmp_path, [person(1, [-3.2, 40, 20, 10.4])])
    split = read_coco(path, boxes="person")
    assert split.images[0].record.faces == (Face(0, 40, 17, 8),) and split.counts["clipped"] == 1


def test_a_box_wholly_outside_is_an_error_naming_the_annotation(tmp_path):
    path = coco_file(tmp_path, [person(5, [64, 10, 8, 8])])  # x1 = 64 = the image width
    with pytest.raises(CocoFormatError, match=r"ann\.json: annotation 5 \(image 000000000007\.jpg\): its box .* lies "
                                              r"outside the 64 × 48 image: fix its box or its image_id"):
        read_coco(path, boxes="person")


def test_images_without_a_box_are_left_out_and_keys_follow_the_file_name(tmp_path):
    images = [{"id": 1, "file_name": "0--Parade/0_Parade.a.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "000000000002.jpg", "width": 64, "height": 48},
              {"id": 3, "file_name": "train2017/000000000003.jpg", "width": 64, "height": 48}]
    path = coco_file(tmp_path, [person(1, [1, 1, 9, 9], image_id=3), person(2, [1, 1, 9, 9], image_id=1)], images)
    split = read_coco(path, boxes="person")
    # `images` order, not annotation order; the dot of `0_Parade.a` would end a WebDataset key.
    assert [(i.image_id, i.record.event, i.record.name) for i in split.images] == [
        (1, "0--Parade", "0_Parade_a"), (3, "train2017", "000000000003")]
    assert split.counts["images"] == 3 and split.counts["kept"] == 2


def test_face_boxes_need_wholebody_annotations(tmp_path):
    path = coco_file(tmp_path, [person(3, [1, 1, 9, 9])])
    with pytest.raises(CocoFormatError, match=r"annotation 3 .*: no face_box: --boxes face needs COCO-WholeBody.*"
                                              r"use --boxes person"):
        read_coco(path, boxes="face")


def test_settings_by_height_and_never_for_invalid_or_degenerate():
    assert face_settings(Face(0, 0, 10, 9)) == frozenset()
    assert face_settings(Face(0, 0, 10, 10)) == {"hard"}
    assert face_settings(Face(0, 0, 10, 30)) == {"hard", "medium"}
    assert face_settings(Face(0, 0, 10, 50)) == {"hard", "medium", "easy"}
    assert face_settings(Face(0, 0, 10, 50, invalid=1)) == frozenset()
    assert face_settings(Face(0, 0, 0, 50)) == frozenset()


def test_a_detection_on_a_crowd_box_is_neither_true_nor_false_positive(tmp_path):
    image = {"id": 7, "file_name": "000000000007.jpg", "width": 64, "height": 64}
    path = coco_file(tmp_path, [person(1, [2, 2, 20, 50]), person(2, [30, 4, 30, 50], iscrowd=1)], images=[image])
    truth = ground_truth_from_arrays(**ground_truth_arrays(read_coco(path, boxes="person").images))
    assert [list(truth.images[0].keep[s]) for s in ("easy", "medium", "hard")] == [[0], [0], [0]]
    key = ("coco", "000000000007")
    # The crowd box scores first: a false positive there would halve the precision at the top threshold.
    both = {key: np.array([[30, 4, 30, 50, 0.9], [2, 2, 20, 50, 0.8]])}
    assert evaluate(both, truth).ap == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    stray = {key: np.array([[40, 56, 10, 8, 0.9], [2, 2, 20, 50, 0.8]])}  # overlaps nothing: a false positive
    assert evaluate(stray, truth).ap["hard"] < 1.0


def test_invented_person_box_of_one_face_by_hand():
    # face (100, 100, 20, 24) in 640 × 480: widen 0.5 × 20 = 10 each side, raise 0.15 × 24 = 3.6, lower 2 × 24 = 48
    # x1 = 100 - 10 = 90, y1 = round(96.4) = 96, x2 = 120 + 10 = 130, y2 = 124 + 48 = 172
    assert person_boxes([Face(100, 100, 20, 24)], 640, 480) == [[90, 96, 40, 76]]
    # At the border: clipped to the image (y2 = min(480, 470 + 48) = 480).
    assert person_boxes([Face(0, 446, 20, 24)], 640, 480) == [[0, 442, 30, 38]]


def test_invented_person_boxes_hold_their_face_and_never_overlap_at_the_metric_threshold():
    # A column of faces one face height apart: the full boxes (2 face heights below) would overlap at IoU ~0.5.
    faces = [Face(100, 100 + 30 * k, 20, 24) for k in range(6)] + [Face(121, 100, 20, 24), Face(50, 50, 0, 5)]
    boxes = person_boxes(faces, 640, 480)
    solid = [k for k, f in enumerate(faces) if not f.is_degenerate]
    for k in solid:
        (x, y, w, h), face = boxes[k], faces[k]
        assert x <= face.x and y <= face.y and x + w >= face.x + face.w and y + h >= face.y + face.h
        assert 0 <= x and 0 <= y and x + w <= 640 and y + h <= 480
    overlap = box_overlap(np.array([boxes[k] for k in solid], np.float64), np.array([boxes[k] for k in solid]))
    np.fill_diagonal(overlap, 0)
    assert overlap.max() < 0.5
    assert boxes[-1] == [50, 50, 0, 5]  # a degenerate face keeps its box


def test_generated_annotation_file_reads_back_as_the_records(tmp_path):
    records = [ImageRecord("0--Parade/0_Parade_x_0.jpg", (Face(10, 10, 20, 24), Face(40, 5, 12, 14, invalid=1))),
               ImageRecord("1--Handshaking/1_Handshaking_y_1.jpg", ())]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco_annotations(records, [(64, 48), (64, 48)])))
    split = read_coco(path, boxes="face")
    assert [i.record for i in split.images] == records[:1]  # the image without faces is left out
    assert split.counts["images"] == 2
