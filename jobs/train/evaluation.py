"""Epoch-end evaluation: every rank detects its share of the val set, the project's evaluator gathers
them to rank 0 and computes the official WIDER FACE AP.

Rank 0 also logs the PR curves and a grid of val images with true (green) and predicted (red)
boxes to the MLflow run.
"""

from __future__ import annotations

import functools
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
from isrn_model.wider_eval import WiderFaceEvaluator, WiderGroundTruth, WiderResult, load_ground_truth
from isrn_model.wider_eval.plot import plot_pr_curves
from jobs.train.collectives import gather_to_rank_0
from jobs.train.steps import detect_batch
from jobs.train.tracking import Tracker

log = logging.getLogger(__name__)

GRID_CELL = 320
GRID_SCORE_THRESHOLD = 0.5


@functools.lru_cache(maxsize=4)
def ground_truth_of(val_manifest: str, settings: S3Settings) -> WiderGroundTruth:
    """The official .mat ground truth shipped beside a val manifest (downloaded once per process)."""
    with tempfile.TemporaryDirectory(prefix="isrn-gt-") as directory:
        fetch_ground_truth(val_manifest, directory, settings)
        return load_ground_truth(Path(directory))


def evaluate_epoch(model: torch.nn.Module, val_loader, device: torch.device, *, ground_truth: WiderGroundTruth,
                   epoch: int, is_main: bool, tracker: Tracker, grid_size: int,
                   amp: bool = False) -> dict[str, float] | None:
    """AP per setting on rank 0 (None on other ranks); every rank runs its share of the val set."""
    evaluator = WiderFaceEvaluator(ground_truth, gather=functools.partial(gather_to_rank_0, device=device))
    grid: list[np.ndarray] = []
    for batch in val_loader:
        detections = list(detect_batch(model, batch, device, amp=amp))
        for key, boxes, scores in detections:
            evaluator.process(key, boxes, scores)
        if is_main and len(grid) < grid_size:
            grid.extend(_draw(batch, {key: (boxes, scores) for key, boxes, scores in detections}, grid_size - len(grid)))
    result = evaluator.evaluate()
    if result is None:
        return None
    if evaluator.unprocessed:
        log.warning("epoch %d: %d val images produced no output (skipped as corrupt?)", epoch, evaluator.unprocessed)
    _log_artifacts(tracker, result, grid, epoch)
    return {setting: float(ap) for setting, ap in result.ap.items()}


def _log_artifacts(tracker: Tracker, result: WiderResult, grid: list[np.ndarray], epoch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="isrn-eval-") as directory:
        plot = plot_pr_curves(result, Path(directory) / f"pr_epoch_{epoch:03d}.png", label=f"epoch {epoch}")
        tracker.log_artifact(plot, "pr_curves")
        if grid:
            path = Path(directory) / f"val_epoch_{epoch:03d}.jpg"
            cv2.imwrite(str(path), _tile(grid))
            tracker.log_artifact(path, "val_images")


def _draw(batch: dict[str, Any], detections: dict, limit: int) -> list[np.ndarray]:
    """Val images of the batch (original size) with true boxes in green, detections ≥ 0.5 in red."""
    drawn = []
    for index, (key, scale, valid) in enumerate(zip(batch["keys"], batch["scales"], batch["valid"])):
        if not bool(valid) or len(drawn) >= limit:
            continue
        height, width = (int(v) for v in batch["image_sizes"][index])
        s = float(scale)
        image = batch["images"][index].permute(1, 2, 0).numpy()
        image = image[: max(1, round(height * s)), : max(1, round(width * s))]
        image = cv2.cvtColor(np.ascontiguousarray(image.clip(0, 255).astype(np.uint8)), cv2.COLOR_RGB2BGR)
        for x1, y1, x2, y2 in batch["targets"][index]["boxes"].numpy() * s:
            cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (0, 200, 0), 1)
        boxes, scores = detections.get(tuple(key), (np.zeros((0, 4)), np.zeros(0)))
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
