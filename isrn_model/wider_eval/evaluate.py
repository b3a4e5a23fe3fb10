"""The official WIDER FACE metric (AP on Easy, Medium and Hard), exact to the MATLAB tool.

Reproduces `eval_tools/` of the WIDER FACE devkit (also bundled with the SRN code as
`tools/widerface_eval/`): `read_pred.m`, `norm_score.m`, `evaluation.m` (`image_evaluation`,
`image_pr_info`, `dataset_pr_info`), `boxoverlap.m` and `VOCap`. Step by step:

1. Per image, boxes are stably sorted by raw score, descending (`read_pred.m`).
2. Scores are min-max normalised over all detections of all images in single precision
   (`norm_score.m` starts from `realmin/realmax('single')`, and MATLAB/Octave arithmetic of a single
   and a double is single: the double operand is demoted first).
3. For each image with faces and detections, each detection in order is matched to a face over
   *all* faces of the image (`match_faces`). At overlap >= 0.5: a face outside the setting makes the
   detection ignored (it leaves the precision denominator); an unmatched face in the setting becomes
   matched; a second hit on a matched face stays a false positive. Below 0.5: false positive.
4. For thresholds 1 - t/1000, t = 1..1000, the non-ignored detections and matched faces among the
   detections scoring >= threshold are summed over images. Precision = matched / proposed (NaN from
   0/0 kept, as MATLAB does); recall = matched / faces in the setting over every image.
5. AP = VOC all-points AP of that curve (`voc_ap`).

The ground truth is int32 and `boxoverlap.m` mixes it with the double predictions without a cast,
so MATLAB computes the overlap in int32: predicted coordinates are rounded inside min/max, the union
is rounded, and the overlap itself is rounded half away from zero to 0 or 1. The matched face is
therefore the *first* face in annotation order whose true IoU (with that rounding) is >= 0.5, not
the best one. Published WIDER numbers were computed this way. `float_iou=True` gives the float
variant of the popular Python ports instead (float IoU, the face of maximal IoU).

Steps 1 to 3 do not depend on which faces count, so `match_detections` runs them once into a
`Matching`, and `Matching.pr_curve` does step 4 for any set of counted faces: a setting here, a
setting cut to the faces of one attribute value or size band in `breakdown.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from isrn_model.wider_eval.ground_truth import ImageKey, WiderGroundTruth

logger = logging.getLogger(__name__)

THRESHOLD_COUNT = 1000
"""Score thresholds 1 - t/1000, t = 1..1000 (`thresh_num` in evaluation.m)."""
IOU_THRESHOLD = 0.5
"""`IoU_thresh` in evaluation.m."""

_INT32_MIN = float(np.iinfo(np.int32).min)
_INT32_MAX = float(np.iinfo(np.int32).max)
_REALMIN_SINGLE = np.float32(np.finfo(np.float32).tiny)  # realmin('single'), the running max's start
_REALMAX_SINGLE = np.float32(np.finfo(np.float32).max)  # realmax('single'), the running min's start
_THRESHOLDS = 1 - np.arange(1, THRESHOLD_COUNT + 1) / THRESHOLD_COUNT  # double, as in MATLAB; decreasing


@dataclass(frozen=True)
class WiderResult:
    """AP and PR curve per setting.

    Attributes:
        ap: setting -> AP in [0, 1].
        pr_curves: setting -> float64 array [1000, 2] of (precision, recall); row t-1 is the
            threshold 1 - t/1000 on the normalised score. Precision is NaN where nothing scores
            above the threshold.
        num_faces: setting -> faces counted in the recall denominator.
        float_iou: whether the float-IoU variant produced this (False: the official tool).
    """

    ap: dict[str, float]
    pr_curves: dict[str, np.ndarray]
    num_faces: dict[str, int]
    float_iou: bool = False


def evaluate(
    predictions: Mapping[ImageKey, np.ndarray],
    ground_truth: WiderGroundTruth,
    *,
    float_iou: bool = False,
) -> WiderResult:
    """The official WIDER FACE AP of `predictions` against `ground_truth`.

    Args:
        predictions: (event, image name) -> array [N, 5] of (x, y, w, h, score), pixels, any order.
            An image of the ground truth without an entry has no detections; entries for images not
            in the ground truth are ignored (and logged), as the official tool never reads them.
        ground_truth: from `load_ground_truth` or `ground_truth_from_arrays`.
        float_iou: the float variant of the Python ports instead of the official int32 matching.

    Raises:
        ValueError: a prediction array is not [N, 5] of finite numbers (names the image).
    """
    matching = match_detections(predictions, ground_truth, float_iou=float_iou)
    return result_of(matching, ground_truth)


def result_of(matching: Matching, ground_truth: WiderGroundTruth) -> WiderResult:
    """The official result per setting, from a matching of the same ground truth."""
    ap, pr_curves, num_faces = {}, {}, {}
    for setting in ground_truth.settings:
        curve = matching.pr_curve(ground_truth.keep_mask(setting))
        pr_curves[setting] = curve
        ap[setting] = voc_ap(curve[:, 1], curve[:, 0])
        num_faces[setting] = ground_truth.num_faces_in(setting)
    return WiderResult(ap=ap, pr_curves=pr_curves, num_faces=num_faces, float_iou=matching.float_iou)


@dataclass(frozen=True)
class Matching:
    """Every detection matched to the faces once, reduced to what any PR curve needs.

    Which face a detection matches does not depend on which faces count (the setting only decides
    what a match means: a hit on a counted face is proposed, a hit on another face is ignored), so
    the matching is done once and the curve of any set of counted faces (a setting, or a setting
    restricted to a subset of faces, see `breakdown.py`) is read from it in O(hits + faces).

    A detection "counts from bin b" when its normalised score is >= the threshold 1 - (b + 1)/1000
    and below the previous one: it is counted at thresholds b, b + 1, ..., 999 (0-based rows of the
    PR curve). Bin `THRESHOLD_COUNT` means never (NaN score). Faces are numbered globally, as in
    `WiderGroundTruth.face_offsets`.

    Attributes:
        hit_face: int64 [H]: the face each detection that matched a face hit, one entry per such
            detection (images without faces or without detections contribute nothing, as in the
            official tool, which skips them).
        hit_bin: int64 [H]: the bin from which that detection counts.
        first_hit_bin: int64 [F]: per face, the bin of its highest-scoring hit (the hit that makes it
            found; later hits are duplicates); `THRESHOLD_COUNT` if never hit.
        unmatched: int64 [THRESHOLD_COUNT]: per threshold, the detections matching no face that count
            (always proposed: false positives in every setting).
        float_iou: whether the float-IoU variant produced this.
    """

    hit_face: np.ndarray
    hit_bin: np.ndarray
    first_hit_bin: np.ndarray
    unmatched: np.ndarray
    float_iou: bool = False

    @property
    def num_faces(self) -> int:
        return len(self.first_hit_bin)

    def pr_curve(self, counted: np.ndarray) -> np.ndarray:
        """The PR curve when the faces `counted` (bool [F]) count and every other face is ignored.

        A hit on a counted face is proposed (found, or a duplicate: a false positive); a hit on any
        other face is ignored (neither true nor false positive), as the official tool does with a
        face outside the setting; a detection matching no face is a false positive.

        Returns:
            float64 array [THRESHOLD_COUNT, 2] of (precision, recall), as `WiderResult.pr_curves`.
        """
        counted = np.asarray(counted, bool)
        if counted.shape != (self.num_faces,):
            raise ValueError(f"counted must be a bool array [{self.num_faces}] over the faces; got shape {counted.shape}")
        proposed_hits = np.bincount(self.hit_bin[counted[self.hit_face]], minlength=THRESHOLD_COUNT + 1)
        found = np.bincount(self.first_hit_bin[counted], minlength=THRESHOLD_COUNT + 1)
        # Counts are integers: the same float64 values however they are summed.
        proposed_sum = (self.unmatched + np.cumsum(proposed_hits[:THRESHOLD_COUNT])).astype(np.float64)
        recalled_sum = np.cumsum(found[:THRESHOLD_COUNT]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([recalled_sum / proposed_sum, recalled_sum / int(counted.sum())], axis=1)


def match_detections(
    predictions: Mapping[ImageKey, np.ndarray], ground_truth: WiderGroundTruth, *, float_iou: bool = False
) -> Matching:
    """Steps 1 to 3 of the official protocol (module docstring): sort, normalise, match.

    Args and raises as `evaluate`.
    """
    keys = set(ground_truth.keys())
    extra = [key for key in predictions if key not in keys]
    if extra:
        logger.warning("ignoring predictions for %d image(s) not in the ground truth, e.g. %s/%s", len(extra), *extra[0])

    # 1. Per image, stable sort by raw score, descending.
    sorted_preds = [sort_by_score(_validated(image.key, predictions.get(image.key))) for image in ground_truth.images]

    # 2. Single-precision min-max normalisation over every image of the ground truth.
    norm_scores = normalize_scores([boxes[:, 4] for boxes in sorted_preds])
    if any(len(scores) and np.isnan(scores).all() for scores in norm_scores):
        logger.warning("all scores are equal: normalised scores are NaN (0/0, as in the official tool) and AP is 0")

    # 3. Matching, per image: the matched face of each detection, as a global face index (-1: none).
    face_offsets = ground_truth.face_offsets()
    matched_faces, bins = [], []
    for i, image in enumerate(ground_truth.images):
        boxes = sorted_preds[i]
        if len(image.boxes) == 0 or len(boxes) == 0:
            continue  # evaluation.m skips the image; its faces still count in the recall denominator
        local = match_faces(boxes[:, :4], image.boxes, float_iou=float_iou)
        matched_faces.append(np.where(local >= 0, local + face_offsets[i], -1))
        bins.append(threshold_bins(norm_scores[i]))
    matched_face = np.concatenate([np.zeros(0, np.int64), *matched_faces])
    bin_ = np.concatenate([np.zeros(0, np.int64), *bins])

    # 4 (the part every curve shares). The detections at or above a threshold are a prefix of each
    # image's sorted list (`find(score >= thresh, 1, 'last')`), so counting by bin counts the same.
    hit = matched_face >= 0
    hit_face, hit_bin = matched_face[hit], bin_[hit]
    first_hit_bin = np.full(int(face_offsets[-1]), THRESHOLD_COUNT, np.int64)
    np.minimum.at(first_hit_bin, hit_face, hit_bin)  # the first hit in score order scores highest
    unmatched = np.cumsum(np.bincount(bin_[~hit], minlength=THRESHOLD_COUNT + 1)[:THRESHOLD_COUNT])
    return Matching(hit_face=hit_face, hit_bin=hit_bin, first_hit_bin=first_hit_bin, unmatched=unmatched,
                    float_iou=float_iou)


def sort_by_score(boxes: np.ndarray) -> np.ndarray:
    """Rows [N, 5] of (x, y, w, h, score) stably sorted by score, descending (`read_pred.m`)."""
    return boxes[np.argsort(-boxes[:, 4], kind="stable")]


def threshold_bins(norm_scores: np.ndarray) -> np.ndarray:
    """int64 [N]: per normalised score, the first threshold row it counts at (see `Matching`).

    Row t (0-based) has threshold 1 - (t + 1)/1000 in double, compared with the single score in
    double as MATLAB does; a score counts at row t when score >= threshold. NaN never counts.
    """
    scores = np.asarray(norm_scores, np.float64)
    bins = np.searchsorted(-_THRESHOLDS, -scores, side="left")  # rows whose threshold exceeds the score
    return np.where(np.isnan(scores), THRESHOLD_COUNT, bins).astype(np.int64)


def normalize_scores(score_lists: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Min-max normalise scores over all images in single precision, as `norm_score.m`.

    The running max starts at realmin('single') (the smallest positive single, so all-negative
    scores normalise against a max of ~1e-38) and the running min at realmax('single'); both become
    float32 by MATLAB's mixed single/double rule, and so does each normalised score.

    Args:
        score_lists: per image a float array [N] of raw scores (N may be 0).

    Returns:
        per image a float32 array [N]; all NaN if every score is equal (0/0, as in MATLAB).
    """
    non_empty = [np.asarray(scores, np.float64) for scores in score_lists if len(scores)]
    if not non_empty:
        return [np.zeros(0, np.float32) for _ in score_lists]
    max_score = max(_REALMIN_SINGLE, np.float32(max(float(s.max()) for s in non_empty)))
    min_score = min(_REALMAX_SINGLE, np.float32(min(float(s.min()) for s in non_empty)))
    span = np.float32(max_score - min_score)
    with np.errstate(divide="ignore", invalid="ignore"):
        return [(np.asarray(s, np.float64).astype(np.float32) - min_score) / span for s in score_lists]


def match_faces(pred_xywh: np.ndarray, gt_xywh: np.ndarray, *, float_iou: bool = False) -> np.ndarray:
    """The face each prediction matches, per `image_evaluation` in evaluation.m.

    `[max_overlap, idx] = max(overlap_list)`: the face of maximal overlap, the first in annotation
    order among ties; matched if that overlap is >= 0.5. With the official int32 overlap (0 or 1)
    that is the first face whose IoU rounds to 1.

    Args:
        pred_xywh: float array [P, 4] of predicted (x, y, w, h), pixels.
        gt_xywh: int array [G, 4] of ground-truth (x, y, w, h), pixels, annotation order.
        float_iou: float IoU (Python ports) instead of the official int32 overlap.

    Returns:
        int64 array [P]: the 0-based face index, or -1 where the best overlap is below 0.5.
    """
    pred, gt = _corners(pred_xywh, gt_xywh)
    matched = np.full(len(pred), -1, np.int64)
    w, h = _intersection_wh(pred, gt, int32_arithmetic=not float_iou)
    rows, cols = np.nonzero((w > 0) & (h > 0))  # most pairs do not intersect: only these can match
    overlap = _pair_overlap(pred, gt, rows, cols, w[rows, cols], h[rows, cols], int32_arithmetic=not float_iou)
    hit = overlap >= IOU_THRESHOLD
    rows, cols, overlap = rows[hit], cols[hit], overlap[hit]
    order = np.lexsort((cols, -overlap, rows))  # per prediction: highest overlap, then first face
    first_rows, first = np.unique(rows[order], return_index=True)
    matched[first_rows] = cols[order][first]
    return matched


def box_overlap(pred_xywh: np.ndarray, gt_xywh: np.ndarray, *, int32_arithmetic: bool = True) -> np.ndarray:
    """`boxoverlap.m` between every prediction and every face: float64 array [P, G].

    Boxes become (x1, y1, x2, y2) = (x, y, x + w, y + h) and the overlap counts pixels inclusively
    ("+1"): area = (x2 - x1 + 1)(y2 - y1 + 1). With `int32_arithmetic` each operation mixing the
    int32 ground truth follows MATLAB's int32 rules (round half away from zero, saturate): the
    result is the integer overlap, 0 or 1 for ordinary boxes (IoU >= 0.5 -> 1). Without it, the
    float IoU of the Python ports. Pairs that do not intersect get 0.

    Worked example: gt (0, 0, 9, 9) has area 10 * 10 = 100; prediction (0, 0, 9, 4.5) has x2, y2 =
    9, 4.5. int32: y2 = min(9, round(4.5) = 5) = 5, inter = 10 * 6 = 60, pred area = 10 * 5.5 = 55,
    union = round(100 + 55) - 60 = 95, overlap = round(60 / 95 = 0.63) = 1. Float: inter = 10 * 5.5
    = 55, IoU = 55 / (100 + 55 - 55) = 0.55.
    """
    pred, gt = _corners(pred_xywh, gt_xywh)
    w, h = _intersection_wh(pred, gt, int32_arithmetic=int32_arithmetic)
    overlap = np.zeros(w.shape, np.float64)
    rows, cols = np.nonzero((w > 0) & (h > 0))
    overlap[rows, cols] = _pair_overlap(pred, gt, rows, cols, w[rows, cols], h[rows, cols], int32_arithmetic=int32_arithmetic)
    return overlap


def _corners(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, w, h) -> float64 (x1, y1, x2, y2) with x2 = x + w, as evaluation.m before boxoverlap."""
    pred = np.asarray(pred_xywh, np.float64).reshape(-1, 4)
    gt = np.asarray(gt_xywh).reshape(-1, 4).astype(np.float64)  # int32 values: exact in float64
    return (np.concatenate([pred[:, :2], pred[:, :2] + pred[:, 2:]], axis=1),
            np.concatenate([gt[:, :2], gt[:, :2] + gt[:, 2:]], axis=1))


def _intersection_wh(pred: np.ndarray, gt: np.ndarray, *, int32_arithmetic: bool) -> tuple[np.ndarray, np.ndarray]:
    """Intersection width and height ("+1"), [P, G] each; <= 0 where the boxes do not intersect."""
    if int32_arithmetic:
        # max/min of an int32 and a double is int32: the predicted coordinate is rounded (rounding
        # is monotonic, so rounding before or after max/min gives the same).
        pred = matlab_int32(pred)
    w = np.minimum(gt[None, :, 2], pred[:, None, 2]) - np.maximum(gt[None, :, 0], pred[:, None, 0]) + 1
    h = np.minimum(gt[None, :, 3], pred[:, None, 3]) - np.maximum(gt[None, :, 1], pred[:, None, 1]) + 1
    return w, h


def _pair_overlap(
    pred: np.ndarray, gt: np.ndarray, rows: np.ndarray, cols: np.ndarray, w: np.ndarray, h: np.ndarray, *, int32_arithmetic: bool
) -> np.ndarray:
    """Overlap of the intersecting pairs (pred[rows], gt[cols]) with intersection w x h."""
    p, g = pred[rows], gt[cols]
    pred_area = (p[:, 2] - p[:, 0] + 1) * (p[:, 3] - p[:, 1] + 1)  # double: not rounded
    gt_area = (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1)
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if not int32_arithmetic:
            return inter / (pred_area + gt_area - inter)
        # aarea + barea - inter: int32 + double is rounded to int32, then int32 - int32 saturates.
        union = np.clip(matlab_int32(gt_area + pred_area) - inter, _INT32_MIN, _INT32_MAX)
        return _int32_divide(inter, union)


def matlab_int32(values: np.ndarray) -> np.ndarray:
    """MATLAB's `int32(x)` of doubles, as float64: round half away from zero, saturate, NaN -> 0."""
    values = np.asarray(values, np.float64)
    whole = np.trunc(values)
    fraction = values - whole  # exact in binary floating point
    rounded = whole + np.where(np.abs(fraction) >= 0.5, np.sign(values), 0.0)
    return np.nan_to_num(np.clip(rounded, _INT32_MIN, _INT32_MAX), nan=0.0)


def _int32_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """MATLAB's int32 `./` on int-valued float64 arrays: round(a / b); x/0 saturates, 0/0 is 0."""
    quotient = matlab_int32(numerator / np.where(denominator == 0, 1, denominator))
    by_zero = np.sign(numerator) * _INT32_MAX + (numerator < 0) * (_INT32_MIN + _INT32_MAX)
    return np.where(denominator == 0, by_zero, quotient)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-points AP, as `VOCap` (called by wider_plot.m on the PR curve).

    Adds recall 0 and 1 with precision 0, makes precision non-increasing from the right (NaN is
    skipped, as MATLAB's max does), and sums delta-recall x precision where recall changes.
    """
    mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]  # fmax ignores NaN like MATLAB's max
    change = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    terms = (mrec[change] - mrec[change - 1]) * mpre[change]
    return float(np.cumsum(terms)[-1]) if len(terms) else 0.0  # left-to-right sum, as MATLAB's


def _validated(key: ImageKey, boxes: np.ndarray | None) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 5), np.float64)
    array = np.asarray(boxes, np.float64)
    if array.size == 0:
        return np.zeros((0, 5), np.float64)
    if array.ndim != 2 or array.shape[1] != 5:
        raise ValueError(f"predictions of {key[0]}/{key[1]} must be an array [N, 5] of (x, y, w, h, score); got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"predictions of {key[0]}/{key[1]} contain a NaN or infinite value")
    return array
