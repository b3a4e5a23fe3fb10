"""A `reset / process / evaluate` evaluator around the WIDER FACE metric, for training loops.

    evaluator = WiderFaceEvaluator(load_ground_truth(gt_dir))
    evaluator.reset()
    for batch in val_loader:
        for key, det in zip(batch.keys, model(batch.images)):
            evaluator.process(key, det["boxes"].cpu().numpy(), det["scores"].cpu().numpy())
    result = evaluator.evaluate()   # WiderResult on the main rank, None on the others
    # or instead, AP per face attribute and size too; breakdown.result is the same WiderResult:
    breakdown = evaluator.evaluate_breakdown(settings=EvalSettings(test_size=1024, top_k=750))

Distributed: pass `gather`, a function that collects every rank's dict of detections on the
main rank (e.g. a wrapper around `torch.distributed.gather_object`). It must be called on every
rank; it returns the list of all ranks' dicts on the main rank and None elsewhere. This module
never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from isrn_model.wider_eval.breakdown import EvalSettings, WiderBreakdown, evaluate_breakdown
from isrn_model.wider_eval.evaluate import WiderResult, evaluate
from isrn_model.wider_eval.ground_truth import ImageKey, WiderGroundTruth
from isrn_model.wider_eval.predictions import Detections, write_predictions

GatherFn = Callable[[Detections], "list[Detections] | None"]


class WiderFaceEvaluator:
    """Collects detections image by image, then computes the official WIDER FACE AP.

    Args:
        ground_truth: the images to evaluate on; images never processed have no detections.
        float_iou: the float variant of the Python ports instead of the official int32 matching.
        gather: collects all ranks' detections on the main rank (see the module docstring).
    """

    def __init__(self, ground_truth: WiderGroundTruth, *, float_iou: bool = False, gather: GatherFn | None = None) -> None:
        self.ground_truth = ground_truth
        self.float_iou = float_iou
        self._gather = gather
        self._keys = set(ground_truth.keys())
        self._detections: Detections = {}
        self.unprocessed = 0
        """Ground-truth images that no rank processed, after the last `evaluate` (counted as no detections)."""

    def reset(self) -> None:
        self._detections = {}
        self.unprocessed = 0

    def process(self, image_key: ImageKey, boxes_xyxy: np.ndarray, scores: np.ndarray) -> None:
        """Add the detections of one image.

        Args:
            image_key: (event, image name), as in the ground truth.
            boxes_xyxy: float array [N, 4] of (x1, y1, x2, y2), pixels in the original image; written
                as (x1, y1, x2 - x1, y2 - y1), the inverse of the ground truth's x2 = x + w.
            scores: float array [N].

        Raises:
            ValueError: an unknown or already processed image, or arrays of the wrong shape.
        """
        key = (str(image_key[0]), str(image_key[1]))
        if key not in self._keys:
            raise ValueError(f"image {key[0]}/{key[1]} is not in the ground truth")
        if key in self._detections:
            raise ValueError(f"image {key[0]}/{key[1]} was already processed")
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4) if np.size(boxes_xyxy) else np.zeros((0, 4))
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"image {key[0]}/{key[1]}: {len(boxes)} boxes but {len(scores)} scores")
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        self._detections[key] = np.concatenate([xywh, scores[:, None]], axis=1)

    @property
    def detections(self) -> Detections:
        """This rank's detections so far: (event, name) -> array [N, 5] of (x, y, w, h, score)."""
        return dict(self._detections)

    def evaluate(self) -> WiderResult | None:
        """The official AP over everything processed (on every rank, when gathered); None off the main rank.

        A collective when `gather` is set: every rank calls it (or `evaluate_breakdown`, not both).
        """
        detections = self._gathered()
        return None if detections is None else evaluate(detections, self.ground_truth, float_iou=self.float_iou)

    def evaluate_breakdown(self, *, settings: EvalSettings | None = None,
                           subsets: Sequence[str] | None = None) -> WiderBreakdown | None:
        """AP per setting and face subset (see `breakdown.evaluate_breakdown`); None off the main rank.

        Its `result` is what `evaluate` returns, so one call gives both. A collective, as `evaluate`.
        """
        detections = self._gathered()
        if detections is None:
            return None
        return evaluate_breakdown(detections, self.ground_truth, float_iou=self.float_iou, settings=settings,
                                  subsets=subsets)

    def _gathered(self) -> Detections | None:
        """Every rank's detections on the main rank (this rank's without `gather`); None elsewhere."""
        detections = self._detections
        if self._gather is not None:
            gathered = self._gather(detections)
            if gathered is None:
                return None
            detections = {}
            for part in gathered:
                detections.update(part)
        self.unprocessed = len(self._keys - set(detections))
        return detections

    def write(self, pred_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write this rank's detections in the official submission format (see `write_predictions`)."""
        return write_predictions(pred_dir, self._detections, overwrite=overwrite)
