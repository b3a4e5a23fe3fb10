"""The WIDER FACE metric on hand-made cases, with the arithmetic worked out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isrn_model.wider_eval import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    SETTINGS,
    WiderFaceEvaluator,
    box_overlap,
    evaluate,
    ground_truth_from_arrays,
    ground_truth_mat_files,
    load_ground_truth,
    match_faces,
    normalize_scores,
    read_prediction_file,
    read_predictions,
    save_ground_truth,
    voc_ap,
    write_predictions,
)
from isrn_model.wider_eval.evaluate import matlab_int32
from isrn_model.wider_eval.mat_files import mat_file_names

# Two faces in the first image, none in the second, one in the third. Face (0, 1) counts only in
# Hard; the settings are nested as in the real data.
FACES = {
    ("0--Parade", "a"): np.array([[10, 10, 20, 20], [100, 100, 30, 40]]),
    ("0--Parade", "b"): np.zeros((0, 4), np.int32),
    ("1--Handshaking", "c"): np.array([[50, 60, 15, 15]]),
}
KEEP = {"easy": [[0], [], [0]], "medium": [[0], [], [0]], "hard": [[0, 1], [], [0]]}


def _ground_truth(faces=FACES, keep=KEEP):
    keys = list(faces)
    return ground_truth_from_arrays([k[0] for k in keys], [k[1] for k in keys], list(faces.values()), keep)


def _with_scores(boxes: np.ndarray, scores) -> np.ndarray:
    return np.concatenate([np.asarray(boxes, float), np.asarray(scores, float)[:, None]], axis=1)


def _perfect(faces=FACES) -> dict:
    scores = iter(np.linspace(0.99, 0.5, 10))
    return {key: _with_scores(b, [next(scores) for _ in b]) for key, b in faces.items() if len(b)}


# --- overlap and matching ---------------------------------------------------------------------------


def test_box_overlap_worked_example():
    # gt (0, 0, 9, 9) -> area 10 * 10 = 100. pred (0, 0, 9, 4.5) -> x2, y2 = 9, 4.5, area 10 * 5.5 = 55.
    # int32: y2 = min(9, round(4.5) = 5) -> inter 10 * 6 = 60, union round(100 + 55) - 60 = 95, 60/95 -> 1.
    # float: inter 10 * 5.5 = 55, IoU = 55 / (100 + 55 - 55) = 0.55.
    gt, pred = np.array([[0, 0, 9, 9]]), np.array([[0.0, 0.0, 9.0, 4.5]])
    assert box_overlap(pred, gt, int32_arithmetic=True)[0, 0] == 1.0
    assert box_overlap(pred, gt, int32_arithmetic=False)[0, 0] == pytest.approx(0.55)


def test_box_overlap_int32_rounds_the_overlap_to_zero_below_half():
    # gt (0, 0, 9, 9), pred (0, 0, 9, 3): inter 10 * 4 = 40, union 100 + 40 - 40 = 100, 0.4 -> 0.
    assert box_overlap(np.array([[0.0, 0, 9, 3]]), np.array([[0, 0, 9, 9]]))[0, 0] == 0.0
    # disjoint boxes: 0 in both variants
    assert box_overlap(np.array([[50.0, 50, 5, 5]]), np.array([[0, 0, 9, 9]]), int32_arithmetic=False)[0, 0] == 0.0


def test_matlab_int32_rounds_half_away_from_zero_and_saturates():
    values = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994, 3e10, -3e10])
    expected = [1, 2, 3, -1, -3, 0, 2**31 - 1, -(2**31)]  # np.round would give 0, 2, 2, -0, -2
    assert matlab_int32(values).tolist() == expected


def test_int32_matching_takes_the_first_face_not_the_best():
    # pred (0, 0, 9, 8): x2, y2 = 9, 8, area 10 * 9 = 90.
    # face 0 (0, 0, 9, 5): area 10 * 6 = 60, inter 60, IoU 60 / 90 = 0.67 -> rounds to 1.
    # face 1 (0, 0, 9, 9): area 100, inter 90, IoU 90 / 100 = 0.9 -> rounds to 1.
    gt = np.array([[0, 0, 9, 5], [0, 0, 9, 9]])
    pred = np.array([[0.0, 0.0, 9.0, 8.0]])
    assert match_faces(pred, gt).tolist() == [0]  # official: first face whose overlap rounds to 1
    assert match_faces(pred, gt, float_iou=True).tolist() == [1]  # Python ports: best IoU


def test_float_and_int_variants_give_different_ap():
    # Faces [B = (0, 0, 9, 5), A = (0, 0, 9, 9)], both count. p1 = (0, 0, 9, 8) at 0.9, p2 = B at 0.8.
    # int32: p1 -> B (first), p2 -> B again: a false positive; A is never found.
    #   t < 1000: 1 TP / 1 proposed, recall 1/2; t = 1000 (threshold 0): 1 / 2, recall 1/2.
    #   AP = 0.5 * 1 + 0.5 * 0 = 0.5.
    # float: p1 -> A (IoU 0.9), p2 -> B: recall 1/2 then 1 at precision 1 -> AP = 1.
    faces = {("0--Parade", "x"): np.array([[0, 0, 9, 5], [0, 0, 9, 9]])}
    gt = _ground_truth(faces, {s: [[0, 1]] for s in SETTINGS})
    preds = {("0--Parade", "x"): _with_scores([[0, 0, 9, 8], [0, 0, 9, 5]], [0.9, 0.8])}
    assert evaluate(preds, gt).ap["hard"] == pytest.approx(0.5)
    assert evaluate(preds, gt, float_iou=True).ap["hard"] == pytest.approx(1.0)


# --- the protocol on hand-made sets -----------------------------------------------------------------


def test_perfect_predictions_give_ap_one_on_every_setting():
    result = evaluate(_perfect(), _ground_truth())
    assert result.ap == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
    assert result.num_faces == {"easy": 2, "medium": 2, "hard": 3}
    assert result.pr_curves["hard"].shape == (1000, 2)
    assert result.pr_curves["hard"][-1].tolist() == [1.0, 1.0]  # threshold 0: everything counts


def test_a_face_outside_the_setting_makes_its_prediction_ignored():
    # Image a: the prediction on face 1 (Hard only) scores highest. In Easy it is ignored, not a
    # false positive: precision stays 2/2 and AP 1. The same box far from any face is a false
    # positive: at threshold 0 precision is 2 / 3.
    gt = _ground_truth()
    preds = _perfect()
    preds[("0--Parade", "a")][1, 4] = 1.0
    assert evaluate(preds, gt).ap["easy"] == 1.0
    assert evaluate(preds, gt).pr_curves["easy"][-1].tolist() == [1.0, 1.0]
    preds[("0--Parade", "a")][1, :2] = [400, 400]
    assert evaluate(preds, gt).pr_curves["easy"][-1, 0] == pytest.approx(2 / 3)


def test_a_duplicate_is_a_false_positive():
    # One image, faces A and B. pA 0.9, a copy of pA 0.8, pB 0.7 -> normalised 1, 0.5, 0.
    # t < 500: 1 TP / 1, recall 1/2. 500 <= t < 1000: 1 TP / 2, recall 1/2. t = 1000: 2 / 3, recall 1.
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6 (without the copy: 1).
    faces = {("0--Parade", "x"): np.array([[0, 0, 9, 9], [50, 50, 9, 9]])}
    gt = _ground_truth(faces, {s: [[0, 1]] for s in SETTINGS})
    preds = {("0--Parade", "x"): _with_scores([[0, 0, 9, 9], [0, 0, 9, 9], [50, 50, 9, 9]], [0.9, 0.8, 0.7])}
    result = evaluate(preds, gt)
    assert result.ap["easy"] == pytest.approx(5 / 6)
    assert result.pr_curves["easy"][-1].tolist() == pytest.approx([2 / 3, 1.0])


def test_an_image_without_faces_is_skipped():
    # Predictions on an image with no face are not counted at all (evaluation.m skips the image).
    preds = _perfect()
    preds[("0--Parade", "b")] = _with_scores([[5, 5, 10, 10]], [0.95])
    assert evaluate(preds, _ground_truth()).ap == {"easy": 1.0, "medium": 1.0, "hard": 1.0}


def test_equal_scores_normalise_to_nan_as_the_official_tool():
    # max == min: (s - min) / 0 is NaN for every box, nothing passes a threshold, AP 0.
    preds = {key: _with_scores(b, np.ones(len(b))) for key, b in FACES.items() if len(b)}
    assert evaluate(preds, _ground_truth()).ap["easy"] == 0.0


def test_normalize_scores_is_single_precision_from_realmin():
    # Each step is float32: (float32(s) - float32(min)) / (float32(max) - float32(min)).
    scores = np.array([0.1, 0.2, 0.3])
    (normalised,) = normalize_scores([scores])
    f = scores.astype(np.float32)
    assert normalised.dtype == np.float32
    assert normalised.tolist() == ((f - f[0]) / (f[2] - f[0])).tolist()
    # The running max starts at realmin('single') ~ 1.2e-38, not -inf: all-negative scores
    # normalise against ~0, so -0.5 -> (-0.5 + 1) / (1.2e-38 + 1) = 0.5, not 1.
    assert normalize_scores([np.array([-1.0, -0.5])])[0].tolist() == [0.0, 0.5]


def test_voc_ap_skips_nan_precision():
    # mrec [0, 0, 0, .5, 1, 1], mpre [0, nan, nan, 1, .5, 0] -> from the right [1, 1, 1, 1, .5, 0].
    # AP = (0.5 - 0) * 1 + (1 - 0.5) * 0.5 = 0.75
    assert voc_ap(np.array([0, 0, 0.5, 1]), np.array([np.nan, np.nan, 1, 0.5])) == 0.75


def test_unknown_prediction_keys_are_ignored_and_bad_arrays_rejected():
    preds = _perfect()
    preds[("9--Press", "elsewhere")] = _with_scores([[0, 0, 1, 1]], [0.1])
    assert evaluate(preds, _ground_truth()).ap["hard"] == 1.0
    with pytest.raises(ValueError, match="0--Parade/a"):
        evaluate({("0--Parade", "a"): np.zeros((2, 4))}, _ground_truth())


# --- files -------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_unsorted_files_give_the_same_ap_as_sorted(tmp_path):
    rng = np.random.default_rng(0)
    preds = _perfect()
    for key in preds:  # add false positives, then shuffle the rows on disk
        noise = _with_scores(rng.uniform(0, 200, (5, 4)), rng.uniform(0, 1, 5))
        preds[key] = np.concatenate([preds[key], noise])
    ordered = {k: v[np.argsort(-v[:, 4], kind="stable")] for k, v in preds.items()}
    shuffled = {k: v[rng.permutation(len(v))] for k, v in preds.items()}
    write_predictions(tmp_path / "sorted", ordered)
    write_predictions(tmp_path / "shuffled", shuffled)
    gt = _ground_truth()
    expected = evaluate(read_predictions(tmp_path / "sorted"), gt).ap
    assert evaluate(read_predictions(tmp_path / "shuffled"), gt).ap == expected
    assert expected["hard"] < 1.0


def test_a_missing_file_is_an_image_with_no_detections(tmp_path):
    preds = _perfect()
    write_predictions(tmp_path / "p", preds)
    (tmp_path / "p" / "1--Handshaking" / "c.txt").unlink()
    read = read_predictions(tmp_path / "p")
    assert ("1--Handshaking", "c") not in read
    gt = _ground_truth()
    no_detections = {**preds, ("1--Handshaking", "c"): np.zeros((0, 5))}
    assert evaluate(read, gt).ap == evaluate(no_detections, gt).ap
    # Easy: face c is missed. recall 1/2 at precision 1 -> AP 0.5
    assert evaluate(read, gt).ap["easy"] == 0.5


def test_write_then_read_round_trips_exactly(tmp_path):
    preds = {("0--Parade", "a"): _with_scores([[0.1, 1 / 3, 20.25, 1e-7]], [0.123456789012345]),
             ("0--Parade", "b"): np.zeros((0, 5))}
    write_predictions(tmp_path / "p", preds)
    back = read_predictions(tmp_path / "p")
    assert back.keys() == preds.keys()
    assert all(np.array_equal(back[k], preds[k]) for k in preds)
    assert (tmp_path / "p" / "0--Parade" / "a.txt").read_text().splitlines()[:2] == ["a", "1"]
    with pytest.raises(FileExistsError):
        write_predictions(tmp_path / "p", preds)
    write_predictions(tmp_path / "p", {("1--Handshaking", "c"): np.zeros((0, 5))}, overwrite=True)
    assert list(read_predictions(tmp_path / "p")) == [("1--Handshaking", "c")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temporary folder left behind


def test_parsing_tolerates_extra_spaces_tabs_and_blank_lines(tmp_path):
    path = _write(tmp_path / "e" / "x.txt", "x\n 2 \n  10   20\t30 40   0.9  \n\n1,2,3,4,0.5\r\n")
    assert read_prediction_file(path).tolist() == [[10, 20, 30, 40, 0.9], [1, 2, 3, 4, 0.5]]


def test_a_line_with_four_numbers_names_file_and_line(tmp_path):
    path = _write(tmp_path / "e" / "x.txt", "x\n2\n10 20 30 40 0.9\n10 20 30 40\n")
    with pytest.raises(ValueError, match=r"x\.txt, line 4: expected 5 numbers .* got 4"):
        read_prediction_file(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("x\n3\n1 2 3 4 0.5\n", "line 2 says 3 boxes but the file has 1"),
        ("x\n", "box count on line 2"),
        ("x\nmany\n", "line 2: expected the box count"),
        ("x\n1\n1 2 3 four 0.5\n", "line 3: expected 5 finite numbers"),
        ("x\n1\n1 2 3 4 nan\n", "line 3: expected 5 finite numbers"),
    ],
)
def test_malformed_files_are_rejected(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_prediction_file(_write(tmp_path / "e" / "x.txt", text))


def _labelled(faces=FACES, keep=KEEP):
    """FACES with attribute labels: face k of the whole set gets code k % (number of values)."""
    codes, start = {name: [] for name in ATTRIBUTES}, 0
    for boxes in faces.values():
        for name in ATTRIBUTES:
            codes[name].append((start + np.arange(len(boxes))) % len(ATTRIBUTE_VALUES[name]))
        start += len(boxes)
    keys = list(faces)
    return ground_truth_from_arrays([k[0] for k in keys], [k[1] for k in keys], list(faces.values()), keep, codes)


@pytest.mark.parametrize("labelled", [False, True])
def test_ground_truth_round_trips_through_mat_files(tmp_path, labelled):
    gt = _labelled() if labelled else _ground_truth()
    save_ground_truth(gt, tmp_path)
    loaded = load_ground_truth(tmp_path)
    assert loaded.keys() == gt.keys() and loaded.has_attributes == labelled
    for a, b in zip(gt, loaded):
        assert np.array_equal(a.boxes, b.boxes) and b.boxes.dtype == np.int32
        assert all(np.array_equal(a.keep[s], b.keep[s]) for s in SETTINGS)
        assert not labelled or all(np.array_equal(a.attributes[n], b.attributes[n]) for n in ATTRIBUTES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mat_file_names().values())  # no temporary file left


def test_mat_files_are_the_same_bytes_for_the_same_ground_truth():
    # The MATLAB header normally carries the creation time; ours is fixed, so files compare by content.
    first, second = ground_truth_mat_files(_labelled()), ground_truth_mat_files(_labelled())
    assert first == second and list(first) == list(mat_file_names().values())
    assert first["wider_face_val.mat"].startswith(b"MATLAB 5.0 MAT-file, written by isrn_model.wider_eval")


def test_mat_files_keep_the_official_types():
    # As the official release: label lists uint8 [N, 1], gt_list uint8 [K, 1] (1-based), in every file.
    import io

    import scipy.io

    files = ground_truth_mat_files(_labelled())
    hard = scipy.io.loadmat(io.BytesIO(files["wider_hard_val.mat"]))
    assert hard["gt_list"][0, 0][0, 0].dtype == np.uint8 and hard["gt_list"][0, 0][0, 0].ravel().tolist() == [1, 2]
    assert hard["occlusion_label_list"][0, 0][0, 0].dtype == np.uint8
    assert hard["occlusion_label_list"][0, 0][0, 0].tolist() == [[0], [1]]  # face k: k % 3
    assert hard["face_bbx_list"][1, 0][0, 0].dtype == np.int32  # 1--Handshaking, image c


def test_a_main_file_with_some_label_lists_only_is_rejected(tmp_path):
    import scipy.io

    save_ground_truth(_labelled(), tmp_path)
    main = scipy.io.loadmat(tmp_path / "wider_face_val.mat")
    del main["pose_label_list"]
    scipy.io.savemat(tmp_path / "wider_face_val.mat", {k: v for k, v in main.items() if not k.startswith("__")})
    with pytest.raises(ValueError, match="not pose_label_list: the attribute lists come all six or none"):
        load_ground_truth(tmp_path)


def test_attribute_codes_are_checked():
    codes = {name: [np.zeros(1, np.uint8)] for name in ATTRIBUTES}
    codes["occlusion"] = [np.array([3])]
    with pytest.raises(ValueError, match=r"occlusion label of face 0 of image 0 \(e/a\) is 3; expected a code 0..2"):
        ground_truth_from_arrays(["e"], ["a"], [np.array([[0, 0, 1, 1]])], {"easy": [[0]]}, codes)


def test_ground_truth_folder_missing_a_file(tmp_path):
    save_ground_truth(_ground_truth(), tmp_path)
    (tmp_path / "wider_medium_val.mat").unlink()
    with pytest.raises(FileNotFoundError, match="wider_medium_val.mat"):
        load_ground_truth(tmp_path)


def test_ground_truth_from_arrays_rejects_bad_input():
    with pytest.raises(ValueError, match="whole pixels"):
        ground_truth_from_arrays(["e"], ["a"], [np.array([[0.5, 0, 1, 1]])], {"easy": [[0]]})
    with pytest.raises(ValueError, match=r"keep\['easy'\] of image 0 \(e/a\) has index 1"):
        ground_truth_from_arrays(["e"], ["a"], [np.array([[0, 0, 1, 1]])], {"easy": [[1]]})


# --- the evaluator protocol ---------------------------------------------------------------------------


def test_evaluator_matches_evaluate_on_xyxy_input():
    gt = _ground_truth()
    preds = _perfect()
    preds[("0--Parade", "a")] = np.concatenate([preds[("0--Parade", "a")], _with_scores([[300, 300, 10, 10]], [0.97])])
    evaluator = WiderFaceEvaluator(gt)
    evaluator.reset()
    for key, dets in preds.items():
        xyxy = np.concatenate([dets[:, :2], dets[:, :2] + dets[:, 2:4]], axis=1)  # x2 = x + w
        evaluator.process(key, xyxy, dets[:, 4])
    assert evaluator.evaluate().ap == evaluate(preds, gt).ap
    with pytest.raises(ValueError, match="already processed"):
        evaluator.process(("0--Parade", "a"), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.process(("9--Press", "zz"), np.zeros((0, 4)), np.zeros(0))


def test_evaluator_gathers_all_ranks():
    # Rank 1's gather returns None (not the main rank); rank 0's returns both ranks' detections.
    gt = _ground_truth()
    rank1 = WiderFaceEvaluator(gt, gather=lambda detections: None)
    rank0 = WiderFaceEvaluator(gt, gather=lambda detections: [detections, rank1.detections])
    for i, (key, dets) in enumerate(_perfect().items()):
        xyxy = np.concatenate([dets[:, :2], dets[:, :2] + dets[:, 2:4]], axis=1)
        (rank0, rank1)[i % 2].process(key, xyxy, dets[:, 4])
    assert rank1.evaluate() is None
    assert rank0.evaluate().ap == {"easy": 1.0, "medium": 1.0, "hard": 1.0}
