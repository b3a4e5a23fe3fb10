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

from isrn_model.boxes import batched_box_iou

BACKGROUND = -1
IGNORE = -2
IOU_CHUNK_ELEMENTS = 1 << 24
"""Faces are matched in chunks so the IoU matrix (the batch's, B × faces × N) never exceeds this many
floats (64 MiB). The chunk loop depends only on shapes, so it needs no host synchronisation."""


def match_boxes(
    references: Tensor, gt_boxes: Tensor, neg_threshold: float, pos_threshold: float, allow_low_quality: bool
) -> Tensor:
    """Label every reference box of one image.

    Args:
        references: Tensor[N, 4] xyxy pixels (anchors or refined boxes).
        gt_boxes: Tensor[G, 4] xyxy pixels; G may be 0 (all background).
        neg_threshold, pos_threshold: the ignore band [neg, pos).
        allow_low_quality: also make each face's best reference box(es) positive.

    Returns:
        Tensor[N] int64: face index (≥ 0), BACKGROUND (−1) or IGNORE (−2).
    """
    return match_boxes_batched(references, gt_boxes[None], None, neg_threshold, pos_threshold, allow_low_quality)[0]


def match_boxes_batched(
    references: Tensor, gt_boxes: Tensor, gt_valid: Tensor | None, neg_threshold: float, pos_threshold: float,
    allow_low_quality: bool,
) -> Tensor:
    """Label the reference boxes of a whole batch at once, without a host synchronisation.

    Args:
        references: Tensor[B, N, 4] xyxy pixels, or Tensor[N, 4] shared by every image (anchors).
        gt_boxes: Tensor[B, G, 4] xyxy pixels, faces padded to the batch's largest count G.
        gt_valid: Tensor[B, G] bool, False on padding rows (which then match nothing); None: all valid.
        neg_threshold, pos_threshold, allow_low_quality: as :func:`match_boxes`.

    Returns:
        Tensor[B, N] int64, per image exactly what :func:`match_boxes` gives on its valid faces.
    """
    refs = references if references.ndim == 3 else references[None]
    batch, g = gt_boxes.shape[:2]
    n = refs.shape[1]
    device = refs.device
    if g == 0:
        return torch.full((batch, n), BACKGROUND, dtype=torch.long, device=device)
    chunk = max(1, IOU_CHUNK_ELEMENTS // max(batch * n, 1))
    best_iou = torch.full((batch, n), -1.0, device=device)
    best_gt = torch.zeros(batch, n, dtype=torch.long, device=device)
    low_quality = torch.zeros(batch, n, dtype=torch.bool, device=device)
    for start in range(0, g, chunk):
        iou = batched_box_iou(gt_boxes[:, start:start + chunk], refs)  # [B, c, N]
        if gt_valid is not None:
            # −1: below any real IoU (≥ 0), so a padding row never wins, and never "best" for low quality.
            iou = torch.where(gt_valid[:, start:start + chunk, None], iou, -1.0)
        value, index = iou.max(dim=1)  # ties → the first face, as per image
        better = value > best_iou
        best_iou = torch.where(better, value, best_iou)
        best_gt = torch.where(better, index + start, best_gt)
        if allow_low_quality:
            face_best = iou.amax(dim=2, keepdim=True)  # [B, c, 1]: each face's highest IoU, complete in its chunk
            low_quality |= ((iou == face_best) & (face_best > 0)).any(dim=1)

    labels = torch.where(best_iou >= pos_threshold, best_gt, torch.full_like(best_gt, IGNORE))
    labels = torch.where(best_iou < neg_threshold, torch.full_like(labels, BACKGROUND), labels)
    if allow_low_quality:
        labels = torch.where(low_quality, best_gt, labels)
    return labels
