"""Epoch-end evaluation: every rank detects its share of the val set, the project's evaluator gathers
them to rank 0 and computes the official WIDER FACE AP, and its breakdown by face attribute and size.

Rank 0 logs to the MLflow run, at every evaluation:
- metrics: `val_ap_<setting>` and the Hard setting's AP per subset, `val_ap_hard_<attribute>_<value>`
  and `val_ap_hard_size_<band>` (e.g. `val_ap_hard_occlusion_heavy`; a subset without a face is not
  logged, never logged as 0);
- `pr_curves/`: the PR curves; `val_images/`: a grid of val images, true boxes green, detections red;
- `breakdown/`: the breakdown as JSON (with the evaluation settings that produced it) and as a
  table, a bar chart of Hard AP by subset against the previous evaluation, and a gallery of the
  biggest faces the model missed and its highest-scoring false positives, cropped from the val images
  rank 0 evaluated, with their attributes written on them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from data_shards.manifest import fetch_ground_truth
from data_shards.storage import S3Settings
from isrn_model.config import InferenceConfig
from isrn_model.wider_eval import (EvalSettings, WiderBreakdown, WiderFaceEvaluator, WiderGroundTruth,
                                   load_ground_truth)
from jobs.metrics import BREAKDOWN_SETTING
from jobs.train.collectives import gather_to_rank_0
from jobs.train.steps import detect_batch
from jobs.train.tracking import Tracker

log = logging.getLogger(__name__)

GRID_CELL = 320
GRID_SCORE_THRESHOLD = 0.5
GALLERY_CASES = 12
"""Missed faces, and false positives, drawn in each evaluation's gallery."""


@functools.lru_cache(maxsize=4)
def ground_truth_of(val_manifest: str, settings: S3Settings) -> WiderGroundTruth:
    """The official .mat ground truth shipped beside a val manifest (downloaded once per process)."""
    with tempfile.TemporaryDirectory(prefix="isrn-gt-") as directory:
        fetch_ground_truth(val_manifest, directory, settings)
        return load_ground_truth(Path(directory))


def eval_settings(inference: InferenceConfig, val_max_size: int) -> EvalSettings:
    """How the evaluation's detections are made, carried with every result it gives.

    With multi-scale test the scales are those of a full-size val image (`isrn_model.tta`: 0.5, 1,
    1.5^t while under the pixel budget, and the budget itself); smaller images get more up-scales.
    """
    scales = None
    if inference.multi_scale:
        ratio = float(inference.max_test_size) ** 2 / float(val_max_size) ** 2
        ups = int(math.floor(math.log(ratio, 2.25))) if ratio > 1 else 0
        scales = (0.5, 1.0, *(1.5 ** (t + 1) for t in range(ups)), math.sqrt(ratio)) if ratio > 1 else (
            math.sqrt(ratio), 0.75 * math.sqrt(ratio), 0.5 * math.sqrt(ratio))
    return EvalSettings(test_size=val_max_size, test_scales=scales, flip=inference.flip,
                        score_threshold=inference.score_threshold, nms_threshold=inference.nms_threshold,
                        top_k=inference.keep_top_k)


@dataclasses.dataclass(frozen=True)
class ValEvaluation:
    """What every evaluation of a run shares: the ground truth, how detections are made and what rank
    0 logs. `run` is one evaluation (a collective: every rank calls it)."""

    ground_truth: WiderGroundTruth
    settings: EvalSettings
    device: torch.device
    tracker: Tracker
    is_main: bool
    grid_size: int
    """Val images drawn with their boxes in the grid artifact."""
    gallery_images: int
    """Val images rank 0 keeps for the gallery of misses and false positives."""
    amp: bool

    @classmethod
    def of(cls, spec: Any, ground_truth: WiderGroundTruth, device: torch.device, tracker: Tracker,
           is_main: bool) -> "ValEvaluation":
        """The evaluation a job spec asks for (its `eval`, `inference` and `loader.val_max_size`)."""
        return cls(ground_truth=ground_truth, settings=eval_settings(spec.inference, spec.loader.val_max_size),
                   device=device, tracker=tracker, is_main=is_main, grid_size=spec.eval.image_grid,
                   gallery_images=spec.eval.gallery_images, amp=spec.eval.amp)

    def run(self, model: torch.nn.Module, val_loader: Any, *, epoch: int,
            previous: WiderBreakdown | None = None) -> WiderBreakdown | None:
        """The breakdown of `model`'s weights on rank 0 (None on other ranks); every rank runs its share
        of the val set. Rank 0 logs the artifacts, comparing the bar chart with `previous`."""
        gather = functools.partial(gather_to_rank_0, device=self.device)
        evaluator = WiderFaceEvaluator(self.ground_truth, gather=gather)
        grid: list[np.ndarray] = []
        held: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
        for batch in val_loader:
            detections = list(detect_batch(model, batch, self.device, amp=self.amp))
            for key, boxes, scores in detections:
                evaluator.process(key, boxes, scores)
            if self.is_main and len(grid) < self.grid_size:
                drawn = {key: (boxes, scores) for key, boxes, scores in detections}
                grid.extend(_draw(batch, drawn, self.grid_size - len(grid)))
            if self.is_main and len(held) < self.gallery_images:
                held.update(_held_images(batch, self.gallery_images - len(held)))
        breakdown = evaluator.evaluate_breakdown(settings=self.settings)
        if breakdown is None:
            return None
        if evaluator.unprocessed:
            log.warning("epoch %d: %d val images produced no output (skipped as corrupt?)", epoch,
                        evaluator.unprocessed)
        _log_artifacts(self.tracker, breakdown, previous, grid, held, evaluator, epoch)
        return breakdown


def _val_images(batch: dict[str, Any], limit: int):
    """(index, key, BGR uint8 image at val resolution, its pixels per original pixel) of the batch's
    valid images, at most `limit`."""
    taken = 0
    for index, (key, scale, valid) in enumerate(zip(batch["keys"], batch["scales"], batch["valid"])):
        if not bool(valid) or taken >= limit:
            continue
        height, width = (int(v) for v in batch["image_sizes"][index])
        s = float(scale)
        image = batch["images"][index].permute(1, 2, 0).numpy()[: max(1, round(height * s)), : max(1, round(width * s))]
        taken += 1
        yield index, tuple(key), cv2.cvtColor(np.ascontiguousarray(image.clip(0, 255).astype(np.uint8)),
                                              cv2.COLOR_RGB2BGR), s


def _held_images(batch: dict[str, Any], limit: int) -> dict[tuple[str, str], tuple[np.ndarray, float]]:
    """(event, name) -> (BGR uint8 image at val resolution, its pixels per original pixel), valid images only."""
    return {key: (image, s) for _, key, image, s in _val_images(batch, limit)}


def _log_artifacts(tracker: Tracker, breakdown: WiderBreakdown, previous: WiderBreakdown | None,
                   grid: list[np.ndarray], held: dict, evaluator: WiderFaceEvaluator, epoch: int) -> None:
    from isrn_model.wider_eval.gallery import gallery_cases, save_gallery
    from isrn_model.wider_eval.plot import plot_breakdown, plot_pr_curves

    with tempfile.TemporaryDirectory(prefix="isrn-eval-") as directory:
        folder = Path(directory)
        tracker.log_artifact(plot_pr_curves(breakdown.result, folder / f"pr_epoch_{epoch:03d}.png",
                                            label=f"epoch {epoch}"), "pr_curves")
        if grid:
            path = folder / f"val_epoch_{epoch:03d}.jpg"
            cv2.imwrite(str(path), _tile(grid))
            tracker.log_artifact(path, "val_images")
        table = folder / f"breakdown_epoch_{epoch:03d}.txt"
        table.write_text(breakdown.table(by="all") + "\n")
        tracker.log_artifact(table, "breakdown")
        document = folder / f"breakdown_epoch_{epoch:03d}.json"
        document.write_text(json.dumps(breakdown.to_json(), indent=1))
        tracker.log_artifact(document, "breakdown")
        chart = plot_breakdown(breakdown, folder / f"ap_by_subset_epoch_{epoch:03d}.png", previous=previous,
                               setting=BREAKDOWN_SETTING, label=f"epoch {epoch}", previous_label="previous evaluation")
        tracker.log_artifact(chart, "breakdown")
        if held:
            cases = gallery_cases(evaluator.ground_truth, evaluator.detections, setting=BREAKDOWN_SETTING,
                                  keys=held.keys(), misses=GALLERY_CASES, false_positives=GALLERY_CASES,
                                  float_iou=evaluator.float_iou)
            if cases:
                gallery = save_gallery(cases, {k: image for k, (image, _) in held.items()},
                                       folder / f"failures_epoch_{epoch:03d}.jpg",
                                       scales={k: s for k, (_, s) in held.items()},
                                       title=f"epoch {epoch}: biggest missed faces, then highest-scoring false "
                                             f"positives ({BREAKDOWN_SETTING} setting, val images of rank 0)")
                tracker.log_artifact(gallery, "breakdown")


def _draw(batch: dict[str, Any], detections: dict, limit: int) -> list[np.ndarray]:
    """Val images of the batch (original size) with true boxes in green, detections ≥ 0.5 in red."""
    drawn = []
    for index, key, image, s in _val_images(batch, limit):
        for x1, y1, x2, y2 in batch["targets"][index]["boxes"].numpy() * s:
            cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (0, 200, 0), 1)
        boxes, scores = detections.get(key, (np.zeros((0, 4)), np.zeros(0)))
        for (x1, y1, x2, y2), score in zip(boxes * s, scores):
            if score >= GRID_SCORE_THRESHOLD:
                cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 255), 1)
        drawn.append(image)
    return drawn


def _tile(images: list[np.ndarray]) -> np.ndarray:
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    canvas = np.full((rows * GRID_CELL, columns * GRID_CELL, 3), 32, np.uint8)
    for index, image in enumerate(images):
        factor = GRID_CELL / max(image.shape[:2])
        small = cv2.resize(image, (max(1, int(image.shape[1] * factor)), max(1, int(image.shape[0] * factor))))
        r, c = divmod(index, columns)
        canvas[r * GRID_CELL: r * GRID_CELL + small.shape[0], c * GRID_CELL: c * GRID_CELL + small.shape[1]] = small
    return canvas
