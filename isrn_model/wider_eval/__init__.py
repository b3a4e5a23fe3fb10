"""The official WIDER FACE metric in pure NumPy: ground truth, predictions, AP and PR curves.

    from isrn_model.wider_eval import load_ground_truth, read_predictions, evaluate
    result = evaluate(read_predictions("preds/"), load_ground_truth("ground_truth/"))
    result.ap  # {"easy": 0.96, "medium": 0.95, "hard": 0.90}

Command line: `isrn evaluate --predictions preds/ --ground-truth ground_truth/`.
"""

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

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_VALUES",
    "IOU_THRESHOLD",
    "SETTINGS",
    "THRESHOLD_COUNT",
    "GroundTruthImage",
    "ImageKey",
    "Matching",
    "WiderFaceEvaluator",
    "WiderGroundTruth",
    "WiderResult",
    "box_overlap",
    "evaluate",
    "ground_truth_from_arrays",
    "ground_truth_mat_files",
    "load_ground_truth",
    "match_detections",
    "match_faces",
    "normalize_scores",
    "read_prediction_file",
    "read_predictions",
    "save_ground_truth",
    "voc_ap",
    "write_predictions",
]
