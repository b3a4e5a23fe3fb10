"""IoU matching of reference boxes (anchors, or STR-refined boxes) to ground-truth faces with an ignore band.

Each reference box gets its highest-IoU face. With thresholds (neg, pos):

* IoU ≥ pos        → positive, labelled with that face's index (≥ 0);
* IoU <  neg       → background, :data:`BACKGROUND` (−1);
* neg ≤ IoU < pos  → ignored, :data:`IGNORE` (−2): no loss at all.

First step 0.3 / 0.7, second step 0.4 / 0.5 [notes]. With ``allow_low_quality`` every face also makes
positive the reference box(es) with which it has its highest IoU (ties included), even below ``pos``
[ours, as Faster R-CNN / RetinaNet]: otherwise tiny or oddly shaped faces that no anchor covers at
0.7 would never be positives. Such a box keeps its own best face as label.
"""

from __future__ import annotations

import torch
from torch import Tensor

from isrn_model.boxes import box_iou

BACKGROUND = -1
IGNORE = -2
IOU_CHUNK_ELEMENTS = 1 << 24
"""Faces are matched in chunks so the IoU matrix never exceeds this many floats (64 MiB)."""


def match_boxes(
    references: Tensor, gt_boxes: Tensor, neg_threshold: float, pos_threshold: float, allow_low_quality: bool
) -> Tensor:
    """Label every reference box.

    Args:
        references: Tensor[N, 4] xyxy pixels (anchors or refined boxes).
        gt_boxes: Tensor[G, 4] xyxy pixels; G may be 0 (all background).
        neg_threshold, pos_threshold: the ignore band [neg, pos).
        allow_low_quality: also make each face's best reference box(es) positive.

    Returns:
        Tensor[N] int64: face index (≥ 0), BACKGROUND (−1) or IGNORE (−2).
    """
    n = references.shape[0]
    g = gt_boxes.shape[0]
    if g == 0:
        return torch.full((n,), BACKGROUND, dtype=torch.long, device=references.device)
    chunk = max(1, IOU_CHUNK_ELEMENTS // max(n, 1))
    best_iou = torch.full((n,), -1.0, device=references.device)
    best_gt = torch.zeros(n, dtype=torch.long, device=references.device)
    gt_best_iou = torch.empty(g, device=references.device)
    single = None
    for start in range(0, g, chunk):
        iou = box_iou(gt_boxes[start:start + chunk], references)  # [c, N]
        value, index = iou.max(dim=0)
        better = value > best_iou
        best_iou = torch.where(better, value, best_iou)
        best_gt = torch.where(better, index + start, best_gt)
        gt_best_iou[start:start + chunk] = iou.max(dim=1).values
        single = iou if g <= chunk else None

    labels = torch.where(best_iou >= pos_threshold, best_gt, torch.full_like(best_gt, IGNORE))
    labels = torch.where(best_iou < neg_threshold, torch.full_like(labels, BACKGROUND), labels)
    if allow_low_quality:
        low_quality = torch.zeros(n, dtype=torch.bool, device=references.device)
        for start in range(0, g, chunk):
            iou = single if single is not None else box_iou(gt_boxes[start:start + chunk], references)
            target = gt_best_iou[start:start + chunk, None]
            low_quality |= ((iou == target) & (target > 0)).any(dim=0)
        labels = torch.where(low_quality, best_gt, labels)
    return labels
