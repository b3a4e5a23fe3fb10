"""Pure box geometry on ``(x1, y1, x2, y2)`` boxes in pixels (continuous coordinates, no "+1").

All functions take and return torch tensors and never modify their inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

NMS_BLOCK = 512
"""Boxes handled per block in :func:`nms`: bounds the IoU matrix to NMS_BLOCK × N floats."""


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``boxes`` (Tensor[N, 4] xyxy) → Tensor[N]; a negative extent counts as 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of ``boxes1`` (Tensor[N, 4] xyxy) and ``boxes2`` (Tensor[M, 4]) → Tensor[N, M].

    A pair with zero union gives 0, not NaN.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU per batch: ``boxes1`` Tensor[B, N, 4], ``boxes2`` Tensor[B, M, 4] → Tensor[B, N, M]."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def clip_boxes(boxes: Tensor, height: float, width: float) -> Tensor:
    """Clip ``boxes`` (Tensor[..., 4] xyxy) to the image ``[0, width] × [0, height]``."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def degenerate_boxes(boxes: Tensor) -> Tensor:
    """Mask Tensor[N] (bool) of boxes with x2 <= x1 or y2 <= y1 or a non-finite coordinate."""
    return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | ~torch.isfinite(boxes).all(dim=1)


def _greedy_keep_sorted(iou: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS on boxes already sorted by descending score, given their IoU matrix Tensor[K, K].

    Greedy NMS keeps box j iff no *kept* earlier box i < j has IoU > threshold. That is a fixed point
    of ``keep = ~any_i(keep[i] & S[i, j])`` with S the strictly upper-triangular overlap matrix;
    iterating from "keep all" settles entry j once entries < j have settled, so it ends in at most K
    rounds, and in practice in a handful. Returns Tensor[K] bool.
    """
    suppress = (iou > iou_threshold).triu(diagonal=1)
    keep = torch.ones(iou.shape[0], dtype=torch.bool, device=iou.device)
    while True:
        new_keep = ~(suppress & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy non-maximum suppression, exact and vectorised.

    Args:
        boxes: Tensor[N, 4] xyxy pixels.
        scores: Tensor[N].
        iou_threshold: a box is dropped if its IoU with a higher-scored kept box is above this.
        max_keep: stop once this many boxes are kept (the result is the first ``max_keep`` of full NMS).

    Returns:
        Tensor[K] int64 indices into ``boxes`` of the kept boxes, by descending score.

    Boxes are processed in blocks of :data:`NMS_BLOCK` (by score): each block is first suppressed by
    the boxes already kept, then greedy NMS runs inside the block, so memory stays O(NMS_BLOCK × N).
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms expects boxes [N, 4] and scores [N], got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_boxes = boxes[order]
    kept: list[Tensor] = []
    kept_boxes = boxes.new_zeros((0, 4))
    limit = max_keep if max_keep is not None else order.numel()
    for start in range(0, order.numel(), NMS_BLOCK):
        if kept_boxes.shape[0] >= limit:
            break
        block = sorted_boxes[start:start + NMS_BLOCK]
        alive = torch.ones(block.shape[0], dtype=torch.bool, device=boxes.device)
        if kept_boxes.shape[0]:
            alive = (box_iou(block, kept_boxes) <= iou_threshold).all(dim=1)
        idx = alive.nonzero().squeeze(1)
        candidates = block[idx]
        keep = _greedy_keep_sorted(box_iou(candidates, candidates), iou_threshold)
        idx = idx[keep]
        kept.append(idx + start)
        kept_boxes = torch.cat((kept_boxes, block[idx]))
    if not kept:
        return order[:0]
    return order[torch.cat(kept)[:limit]]


def nms_fixed_shape(boxes: Tensor, scores: Tensor, iou_threshold: float, iterations: int) -> Tensor:
    """NMS with fixed shapes and a fixed number of rounds, for ``torch.export`` graphs.

    Args:
        boxes: Tensor[B, K, 4] xyxy, **sorted by descending score** per image.
        scores: Tensor[B, K]; entries <= 0 are padding and never suppress anything.
        iterations: rounds of the fixed-point iteration in :func:`_greedy_keep_sorted`.

    Returns:
        Tensor[B, K] bool keep mask. It equals greedy NMS whenever the suppression chains are no
        longer than ``iterations``; a final "fast NMS" pass guarantees that no two kept boxes overlap
        above the threshold even if they are longer (it can then drop a few extra boxes).
    """
    iou = batched_box_iou(boxes, boxes)
    suppress = (iou > iou_threshold).triu(diagonal=1) & (scores > 0)[:, :, None]
    keep = scores > 0
    for _ in range(iterations):
        keep = (scores > 0) & ~(suppress & keep[:, :, None]).any(dim=1)
    return keep & ~(suppress & keep[:, :, None]).any(dim=1)
