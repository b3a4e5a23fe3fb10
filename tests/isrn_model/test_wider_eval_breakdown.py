"""AP per face attribute and size on hand-made cases, with the arithmetic worked out."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from isrn_model.wider_eval import (
    ATTRIBUTES,
    SUBSETS,
    EvalSettings,
    WiderBreakdown,
    WiderFaceEvaluator,
    evaluate,
    evaluate_breakdown,
    ground_truth_from_arrays,
    match_detections,
    subset_mask,
)
from isrn_model.wider_eval.gallery import FALSE_POSITIVE, MISS, gallery_cases, save_gallery
from isrn_model.wider_eval.plot import plot_breakdown
from isrn_model.wider_eval.subsets import size_band

KEY = ("0--Parade", "x")
# Three faces, all in every setting; B is heavily occluded, A and C are not. Heights 10, 60, 310 px:
# one face per size band.
A, B, C = [0, 0, 9, 10], [50, 50, 9, 60], [100, 100, 9, 310]


def _ground_truth(boxes=(A, B, C), occlusion=(0, 2, 0), keep=(0, 1, 2)):
    labels = {name: [np.zeros(len(boxes), np.uint8)] for name in ATTRIBUTES}
    labels["occlusion"] = [np.array(occlusion, np.uint8)]
    return ground_truth_from_arrays([KEY[0]], [KEY[1]], [np.array(boxes)], {s: [list(keep)] for s in ("easy", "hard")},
                                    labels)


def _rows(*rows) -> dict:
    """(box, score) pairs -> the predictions of the one image, (x, y, w, h, score)."""
    return {KEY: np.array([[*box, score] for box, score in rows], np.float64)}


FAR, FARTHER = [400, 400, 9, 9], [600, 600, 9, 9]  # on no face: false positives
# pA 1.0, pB 0.75, pX 0.5 (no face), pC 0.25, pZ 0 (no face): normalised, min 0 and max 1, they stay.
PREDICTIONS = _rows((A, 1.0), (B, 0.75), (FAR, 0.5), (C, 0.25), (FARTHER, 0.0))


def test_subset_ap_worked_by_hand():
    # Threshold rows t = 1..1000 (threshold 1 - t/1000): pA counts from t 1, pB from 250, pX 500, pC 750, pZ 1000.
    # all = {A, B, C}:  t 1-249: 1/1, recall 1/3; 250-499: 2/2, 2/3; 500-749: 2/3, 2/3; 750-999: 3/4, 1; 1000: 3/5, 1.
    #   AP = 2/3 * 1 + 1/3 * max(3/4, 3/5) = 11/12.
    # occlusion=none = {A, C}: pB hits B, outside the subset: ignored (neither true nor false positive).
    #   t 1-499: 1/1, recall 1/2; 500-749: 1/2; 750-999: 2/3, recall 1; 1000: 2/4.  AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # occlusion=heavy = {B}: pA and pC ignored. t 1-249: 0/0 (NaN), recall 0; 250-499: 1/1, recall 1; then 1/2, 1/2, 1/3.
    #   AP = 1 * 1 = 1.
    breakdown = evaluate_breakdown(PREDICTIONS, _ground_truth())
    assert breakdown.ap("hard") == pytest.approx(11 / 12)
    assert breakdown.ap("hard", "occlusion=none") == pytest.approx(5 / 6)
    assert breakdown.ap("hard", "occlusion=heavy") == 1.0
    assert [breakdown.faces("hard", s) for s in ("all", "occlusion=none", "occlusion=partial", "occlusion=heavy")] == [3, 2, 0, 1]
    none = breakdown.pr_curve("hard", "occlusion=none")
    np.testing.assert_allclose(none[[0, 248, 249, 498, 499, 748, 749, 998, 999]],
                               [[1, 0.5], [1, 0.5], [1, 0.5], [1, 0.5], [0.5, 0.5], [0.5, 0.5], [2 / 3, 1], [2 / 3, 1], [0.5, 1]])
    heavy = breakdown.pr_curve("hard", "occlusion=heavy")
    assert np.isnan(heavy[0, 0]) and heavy[249].tolist() == [1.0, 1.0] and heavy[999].tolist() == pytest.approx([1 / 3, 1])


def test_subset_all_is_the_official_result_bit_for_bit():
    breakdown = evaluate_breakdown(PREDICTIONS, _ground_truth())
    official = evaluate(PREDICTIONS, _ground_truth())
    assert breakdown.result.ap == official.ap and breakdown.result.num_faces == official.num_faces
    for setting in official.pr_curves:
        np.testing.assert_array_equal(breakdown.pr_curve(setting), official.pr_curves[setting])


def test_a_setting_without_faces_still_gives_the_official_result():
    # A tiny val set can leave a setting empty (here easy keeps no face): `result` must still be what
    # `evaluate` returns for it, as training logs val_ap_<setting> from it; subsets of it stay None.
    truth = ground_truth_from_arrays([KEY[0]], [KEY[1]], [np.array([A, B, C])], {"easy": [[]], "hard": [[0, 1, 2]]},
                                     {name: [np.zeros(3, np.uint8)] for name in ATTRIBUTES})
    breakdown, official = evaluate_breakdown(PREDICTIONS, truth), evaluate(PREDICTIONS, truth)
    assert breakdown.result.num_faces == official.num_faces and breakdown.faces("easy") == 0
    np.testing.assert_array_equal(breakdown.pr_curve("easy"), official.pr_curves["easy"])
    assert breakdown.result.ap["easy"] == official.ap["easy"] or (np.isnan(breakdown.result.ap["easy"])
                                                                 and np.isnan(official.ap["easy"]))
    assert breakdown.ap("easy", "occlusion=none") is None


def test_a_subset_without_a_face_is_none_not_zero():
    breakdown = evaluate_breakdown(PREDICTIONS, _ground_truth())
    assert breakdown.ap("hard", "occlusion=partial") is None and breakdown.faces("hard", "occlusion=partial") == 0
    assert breakdown.to_json()["hard"]["invalid=true"] == {"ap": None, "faces": 0}
    assert "val_ap_hard_occlusion_partial" not in breakdown.to_metrics()


def test_a_proposal_on_a_face_outside_the_subset_changes_nothing():
    # pB hits B, which is not in occlusion=none: the curve is the same with and without it, bit for bit
    # (pB scores inside [min, max], so the normalisation does not move either). In `all` it counts.
    without_b = {KEY: np.delete(PREDICTIONS[KEY], 1, axis=0)}
    with_b, no_b = evaluate_breakdown(PREDICTIONS, _ground_truth()), evaluate_breakdown(without_b, _ground_truth())
    np.testing.assert_array_equal(with_b.pr_curve("hard", "occlusion=none"), no_b.pr_curve("hard", "occlusion=none"))
    assert with_b.ap("hard") != no_b.ap("hard")
    # A second box on B (0.6, a false positive in `all`) is ignored in occlusion=none as well.
    duplicate = {KEY: np.concatenate([PREDICTIONS[KEY], [[*B, 0.6]]])}
    np.testing.assert_array_equal(evaluate_breakdown(duplicate, _ground_truth()).pr_curve("hard", "occlusion=none"),
                                  with_b.pr_curve("hard", "occlusion=none"))


def test_removing_a_face_from_the_subset_removes_its_hits_from_both_counts():
    # From `Matching.pr_curve` directly, faces chosen by mask. With a duplicate box on B (0.6):
    # precision = found / proposed, and a face taken out takes its hits out of both.
    # - Removing B: its hit and its duplicate leave `proposed`, its hit leaves `found`. False positives
    #   (proposed - found) never rise: the duplicate is no longer one.
    # - Removing a face never found (here D, far from every box) leaves precision unchanged and raises recall.
    # - Removing a found face can lower precision: {A, C} at t 500-749 is 1/2 (pA; pX false);
    #   {C} alone is 0/1 there (pA ignored, pX false). So "never lowers precision" holds only for missed faces.
    D = [800, 20, 9, 9]
    gt = _ground_truth(boxes=(A, B, C, D), occlusion=(0, 2, 0, 0), keep=(0, 1, 2, 3))
    matching = match_detections({KEY: np.concatenate([PREDICTIONS[KEY], [[*B, 0.6]]])}, gt)

    def counts(*faces):
        counted = np.isin(np.arange(4), faces)
        curve = matching.pr_curve(counted)
        found = np.round(curve[:, 1] * counted.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            proposed = np.where(found > 0, found / curve[:, 0], np.nan)
        return curve, found, proposed

    every, every_found, every_proposed = counts(0, 1, 2, 3)
    no_b, no_b_found, no_b_proposed = counts(0, 2, 3)
    assert (every_proposed[999] - every_found[999], no_b_proposed[999] - no_b_found[999]) == (3, 2)  # pX, pZ (+ dup)
    assert every[999, 1] == 3 / 4 and no_b[999, 1] == 2 / 3
    no_d = counts(0, 1, 2)[0]
    assert np.array_equal(no_d[:, 0], every[:, 0], equal_nan=True) and no_d[999, 1] == 1.0
    assert counts(0, 2)[0][499, 0] == 0.5 and counts(2)[0][499, 0] == 0.0


def test_false_positives_never_rise_when_a_face_leaves_the_subset():
    # Random images, boxes near faces (hits, duplicates) and far from them; for each face f and each
    # threshold: false positives over F minus f <= over F, where false = proposed - found.
    rng = np.random.default_rng(0)
    faces = np.array([[20 * k, 30, 12, 14] for k in range(6)])
    near = faces[rng.integers(0, 6, 15)] + rng.integers(-2, 3, (15, 4))
    far = rng.uniform(300, 400, (5, 4))
    rows = np.concatenate([np.concatenate([near, far]), rng.uniform(0, 1, (20, 1))], axis=1)
    gt = _ground_truth(boxes=faces, occlusion=[0] * 6, keep=range(6))
    matching = match_detections({KEY: rows}, gt)

    def false_positives(counted):
        proposed_hits = np.bincount(matching.hit_bin[counted[matching.hit_face]], minlength=1001)[:1000].cumsum()
        found = np.bincount(matching.first_hit_bin[counted], minlength=1001)[:1000].cumsum()
        return matching.unmatched + proposed_hits - found

    everything = np.ones(6, bool)
    for face in range(6):
        assert np.all(false_positives(everything & (np.arange(6) != face)) <= false_positives(everything))


def test_size_bands_have_integer_limits():
    # small 10..50, medium 51..300, large 301..; under 10 px: no band.
    assert size_band(np.array([9, 10, 50, 51, 300, 301])).tolist() == ["", "small", "small", "medium", "medium", "large"]
    gt = _ground_truth(boxes=(A, [0, 0, 9, 9], C, B), occlusion=(0, 0, 0, 0), keep=(0, 1, 2, 3))
    assert subset_mask(gt, "size=small").tolist() == [True, False, False, False]
    assert subset_mask(gt, "size=large").tolist() == [False, False, True, False]
    breakdown = evaluate_breakdown(PREDICTIONS, gt)
    assert [breakdown.faces("hard", f"size={b}") for b in ("small", "medium", "large")] == [1, 1, 1]
    assert "Faces under 10 px high, in no size band: easy 1, hard 1." in breakdown.table(by="size")


def test_subset_names_are_checked():
    with pytest.raises(ValueError, match="unknown face subset 'occlusion=total'.*occlusion=heavy"):
        evaluate_breakdown(PREDICTIONS, _ground_truth(), subsets=["occlusion=total"])
    no_labels = ground_truth_from_arrays([KEY[0]], [KEY[1]], [np.array([A])], {"hard": [[0]]})
    with pytest.raises(ValueError, match="no attribute labels"):
        evaluate_breakdown(PREDICTIONS, no_labels, subsets=["blur=clear"])
    by_size = evaluate_breakdown(PREDICTIONS, no_labels)  # without labels: `all` and the size bands
    assert list(by_size.subsets["hard"]) == ["all", "size=small", "size=medium", "size=large"]


def test_json_table_and_metrics():
    settings = EvalSettings(test_size=1024, flip=True, score_threshold=0.05, nms_threshold=0.4, top_k=750)
    breakdown = evaluate_breakdown(PREDICTIONS, _ground_truth(), settings=settings)
    data = json.loads(json.dumps(breakdown.to_json()))
    assert list(data) == ["easy", "hard", "settings"] and list(data["hard"]) == list(SUBSETS)
    assert data["hard"]["occlusion=heavy"] == {"ap": 1.0, "faces": 1}
    assert data["settings"]["top_k"] == 750 and data["settings"]["iou_threshold"] == 0.5
    assert data["settings"]["matching"] == "official int32 overlap" and "plain" in data["settings"]["subsets"]
    back = WiderBreakdown.from_json(data)
    assert back.settings == settings and back.to_json() == data
    assert back.pr_curve("hard") is None  # JSON carries no curves
    metrics = breakdown.to_metrics()
    assert metrics["val_ap_hard_occlusion_heavy"] == 1.0 and "val_ap_hard" not in metrics
    table = breakdown.table(by="attribute")
    assert "occlusion=heavy" in table and "size=small" not in table
    assert "test size 1024, single scale, flip yes, score threshold 0.05, NMS threshold 0.4, top-k 750" in table
    assert "size=large (>= 301 px)" in breakdown.table(by="size") and "blur=clear" not in breakdown.table(by="size")


def test_eval_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="EvalSettings.nms_threshold"):
        EvalSettings(nms_threshold=1.5)
    with pytest.raises(ValueError, match="EvalSettings.top_k"):
        EvalSettings(top_k=0)
    with pytest.raises(ValueError, match="EvalSettings.test_scales"):
        EvalSettings(test_scales=(1.0, -0.5))
    assert EvalSettings().describe().startswith("test size unknown, single scale, flip unknown")


def test_evaluator_gives_the_breakdown_gathered_from_all_ranks():
    gt = _ground_truth()
    rank1 = WiderFaceEvaluator(gt, gather=lambda detections: None)
    rank0 = WiderFaceEvaluator(gt, gather=lambda detections: [detections, rank1.detections])
    rows = PREDICTIONS[KEY]
    rank0.process(KEY, np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], axis=1), rows[:, 4])
    assert rank1.evaluate_breakdown() is None
    settings = EvalSettings(top_k=5)
    breakdown = rank0.evaluate_breakdown(settings=settings)
    assert breakdown.settings == settings
    assert breakdown.to_json() == evaluate_breakdown(PREDICTIONS, gt, settings=settings).to_json()


def test_gallery_cases_and_picture(tmp_path):
    # Faces A (10 px), B (60 px, heavy occlusion), C (310 px). Boxes: on A at 0.9, a duplicate on A at 0.8,
    # far from any face at 0.95: C and B are missed, biggest first; false positives by score.
    gt = _ground_truth()
    detections = _rows((A, 0.9), (A, 0.8), (FAR, 0.95))
    cases = gallery_cases(gt, detections)
    assert [(c.kind, c.box_xywh) for c in cases] == [(MISS, tuple(C)), (MISS, tuple(B)), (FALSE_POSITIVE, tuple(FAR)),
                                                   (FALSE_POSITIVE, tuple(A))]
    assert cases[1].notes == ("missed 9x60 px", "medium, occlusion=heavy")
    assert cases[2].notes == ("score 0.950", "no face there") and cases[3].notes == ("score 0.800", "2nd box on face 1")
    assert gallery_cases(gt, detections, keys=[("9--Press", "other")]) == []
    assert len(gallery_cases(gt, detections, misses=1, false_positives=0)) == 1

    image = np.full((500, 700, 3), 90, np.uint8)
    path = save_gallery(cases, {KEY: image}, tmp_path / "gallery.png", cell=96, columns=3, title="epoch 3")
    picture = cv2.imread(str(path))
    assert picture.shape[1] == 3 * 96 and picture.shape[0] > 2 * 96
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.png"]  # no temporary file left
    with pytest.raises(ValueError, match="no image for 0--Parade/x"):
        save_gallery(cases, {}, tmp_path / "none.png")


def test_bar_chart_against_a_previous_evaluation(tmp_path):
    current = evaluate_breakdown(PREDICTIONS, _ground_truth())
    previous = WiderBreakdown.from_json(evaluate_breakdown(_rows((A, 1.0), (C, 0.5)), _ground_truth()).to_json())
    path = plot_breakdown(current, tmp_path / "ap_by_subset.png", previous=previous, label="epoch 2",
                          previous_label="epoch 1")
    assert cv2.imread(str(path)).shape[0] > 300
