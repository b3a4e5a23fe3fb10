"""The official WIDER FACE metric in pure NumPy: ground truth, predictions, AP and PR curves, and AP
per face attribute and size.

    from isrn_model.wider_eval import load_ground_truth, read_predictions, evaluate, evaluate_breakdown
    ground_truth = load_ground_truth("ground_truth/")
    result = evaluate(read_predictions("preds/"), ground_truth)
    result.ap  # {"easy": 0.96, "medium": 0.95, "hard": 0.90}
    breakdown = evaluate_breakdown(read_predictions("preds/"), ground_truth)
    print(breakdown.table())  # AP per blur, expression, illumination, occlusion, pose, invalid, size

Modules: `ground_truth` (in memory), `mat_files` (the official .mat files, read and written),
`predictions` (the submission format), `evaluate` (the official protocol), `subsets` and
`breakdown` (AP per attribute value and size band), `evaluator` (reset / process / evaluate),
`plot` and `gallery` (pictures; matplotlib and OpenCV are imported there only).

Command line: `isrn evaluate --predictions preds/ --ground-truth ground_truth/`.
"""

from isrn_model.wider_eval.breakdown import EvalSettings, SubsetAP, WiderBreakdown, breakdown_of, evaluate_breakdown
from isrn_model.wider_eval.evaluate import (
    IOU_THRESHOLD,
    THRESHOLD_COUNT,
    Matching,
    WiderResult,
    box_overlap,
    evaluate,
    match_detections,
    match_faces,
    normalize_scores,
    voc_ap,
)
from isrn_model.wider_eval.evaluator import WiderFaceEvaluator
from isrn_model.wider_eval.ground_truth import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    SETTINGS,
    GroundTruthImage,
    ImageKey,
    WiderGroundTruth,
    ground_truth_from_arrays,
)
from isrn_model.wider_eval.mat_files import ground_truth_mat_files, load_ground_truth, save_ground_truth
from isrn_model.wider_eval.predictions import read_prediction_file, read_predictions, write_predictions
from isrn_model.wider_eval.subsets import SIZE_BANDS, SUBSETS, subset_mask

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_VALUES",
    "IOU_THRESHOLD",
    "SETTINGS",
    "SIZE_BANDS",
    "SUBSETS",
    "THRESHOLD_COUNT",
    "EvalSettings",
    "GroundTruthImage",
    "ImageKey",
    "Matching",
    "SubsetAP",
    "WiderBreakdown",
    "WiderFaceEvaluator",
    "WiderGroundTruth",
    "WiderResult",
    "box_overlap",
    "breakdown_of",
    "evaluate",
    "evaluate_breakdown",
    "ground_truth_from_arrays",
    "ground_truth_mat_files",
    "load_ground_truth",
    "match_detections",
    "match_faces",
    "normalize_scores",
    "read_prediction_file",
    "read_predictions",
    "save_ground_truth",
    "subset_mask",
    "voc_ap",
    "write_predictions",
]
